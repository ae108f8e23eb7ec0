"""``/openapi.json`` (OpenAPI 3.1) generated from the declared operations and their pydantic models, and ``/docs``,
a self-contained HTML rendering of the same document (no CDN, no JavaScript: the duty room has no internet).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.api.framework import OPERATIONS, PROBLEM_JSON, Operation
from gateway.api.models import Problem

REF = "#/components/schemas/{model}"


@dataclass(frozen=True, slots=True)
class ExtraPaths:
    """Path items of routes that are not framework operations (plain aiohttp handlers that keep their own
    authentication and answers, as the ingest endpoints do: a platform's signature, not a bearer token), documented
    beside them.  ``paths`` refer to ``models`` as ``#/components/schemas/<Model>``."""

    tag: str
    paths: Mapping[str, Mapping[str, Any]]
    models: tuple[type[BaseModel], ...] = ()


# The extra paths the routes mounted on an app document (added before it starts; /openapi.json is built on first use).
EXTRA_PATHS_KEY: web.AppKey[list[ExtraPaths]] = web.AppKey("firegrid_openapi_extra", list)


def build_openapi(extra: Iterable[ExtraPaths] = ()) -> dict[str, Any]:
    """The OpenAPI document; pure function of :data:`OPERATIONS`, the models and ``extra``."""
    inputs: set[type[BaseModel]] = set()
    outputs: set[type[BaseModel]] = {Problem}
    for op in OPERATIONS:
        inputs.add(op.query)
        if op.body is not None:
            inputs.add(op.body)
        if op.response is not None:
            outputs.add(op.response)
    pairs = [(model, "validation") for model in sorted(inputs, key=lambda c: c.__name__)] + [
        (model, "serialization") for model in sorted(outputs, key=lambda c: c.__name__)
    ]
    key_map, top = models_json_schema(pairs, ref_template=REF)  # type: ignore[arg-type]
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(key_map[(model, mode)])  # type: ignore[index]

    def schema_of(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return schemas[ref(model, mode)["$ref"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]

    paths: dict[str, dict[str, Any]] = {}
    query_names: set[str] = set()
    for op in OPERATIONS:
        parameters: list[dict[str, Any]] = []
        for param in op.path_params:
            parameters.append(
                {
                    "name": param.name,
                    "in": "path",
                    "required": True,
                    "description": param.description,
                    "schema": param.schema,
                }
            )
        query_schema = schema_of(op.query, "validation")
        query_names.add(ref(op.query, "validation")["$ref"].rsplit("/", 1)[1])
        required = set(query_schema.get("required", []))
        for name, prop in query_schema.get("properties", {}).items():
            prop = dict(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            entry: dict[str, Any] = {"name": name, "in": "query", "required": name in required, "schema": prop}
            if description:
                entry["description"] = description
            parameters.append(entry)
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "tags": [op.tag],
            "parameters": parameters,
            "responses": _responses(op, ref),
        }
        if op.description:
            operation["description"] = op.description
        if op.role is None:
            operation["security"] = []
        else:
            operation["x-firegrid-role"] = op.role
            operation["description"] = (operation.get("description", "") + f"\n\nNeeds the `{op.role}` role.").strip()
        if op.body is not None:
            operation["requestBody"] = {
                "required": op.body.model_json_schema().get("required") is not None,
                "content": {"application/json": {"schema": ref(op.body, "validation")}},
            }
        if op.request_media:
            binary = {"schema": {"type": "string", "format": "binary"}}
            operation["requestBody"] = {"required": True, "content": {media: binary for media in op.request_media}}
        paths.setdefault(op.full_path, {})[op.method.lower()] = operation
    # The query models were flattened into parameters; do not publish them as schemas of their own.
    for name in query_names:
        schemas.pop(name, None)
    tags = _tags()
    for more in extra:
        if more.models:
            _, extra_top = models_json_schema([(model, "serialization") for model in more.models], ref_template=REF)
            schemas.update(extra_top.get("$defs", {}))
        for path, item in more.paths.items():
            paths.setdefault(path, {}).update(item)
        if more.tag not in tags:
            tags.append(more.tag)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "firegrid API",
            "version": __version__,
            "description": (
                "Alerts, incidents, buildings, devices and live events of a firegrid gateway. "
                "Authenticate with `Authorization: Bearer <token>`; a token's role (viewer < operator < admin) "
                "decides what it may do and its grids/buildings what it may see. Every error is an RFC 9457 "
                "problem document."
            ),
        },
        "servers": [{"url": "/"}],
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }


def _tags() -> list[str]:
    seen: list[str] = []
    for op in OPERATIONS:
        if op.tag not in seen:
            seen.append(op.tag)
    return seen


def _responses(op: Operation, ref: Any) -> dict[str, Any]:
    problem = {"content": {PROBLEM_JSON: {"schema": ref(Problem, "serialization")}}}
    out: dict[str, Any] = {}
    if op.stream:
        out["200"] = {
            "description": "an endless text/event-stream",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    elif op.response_media:
        out[str(op.status)] = {
            "description": "OK",
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in op.response_media},
        }
    elif op.response is not None:
        out[str(op.status)] = {
            "description": "OK" if op.status == 200 else "Created",
            "content": {"application/json": {"schema": ref(op.response, "serialization")}},
        }
    if op.files:
        ok = out.setdefault(str(op.status), {"description": "OK", "content": {}})
        for media in op.files:
            ok["content"][media] = {"schema": {"type": "string", "format": "binary"}}
    messages = {
        400: "invalid query or path parameter, or malformed JSON",
        401: "no token, or an unknown one",
        403: "the token's role or scope does not allow this",
        404: "no such resource",
        409: "not allowed in the alert's current state",
        413: "request body too large",
        415: "the body must be application/json",
        422: "the body does not validate",
        503: "a component this needs is not running",
    }
    for status in op.errors:
        out[str(status)] = {"description": messages.get(status, "error"), **problem}
    out["default"] = {"description": "an error, as a problem document", **problem}
    return out


# --- /docs -------------------------------------------------------------------------------------------------------

DOCS_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:0;color:#1d2733;
background:#f4f6f8}
header{background:#1d2733;color:#fff;padding:1rem 2rem}header h1{margin:0;font-size:1.4rem}
main{max-width:1100px;margin:0 auto;padding:1rem 2rem}
section.op{background:#fff;border:1px solid #d5dbe1;border-radius:6px;margin:1rem 0;padding:.8rem 1rem}
.method{display:inline-block;min-width:4.5em;text-align:center;font-weight:700;border-radius:4px;padding:0 .4em;
color:#fff;margin-right:.6em}.GET{background:#2f7d32}.POST{background:#1565c0}.DELETE{background:#c62828}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em}
pre{background:#f0f2f4;padding:.6rem;overflow:auto;border-radius:4px;max-height:24rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #e3e7eb;padding:.25rem .5rem;text-align:left;
vertical-align:top}.role{float:right;color:#6b7785;font-size:.85em}nav a{margin-right:1rem}
details summary{cursor:pointer;color:#1565c0}
"""


def render_docs(spec: dict[str, Any]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{esc(spec['info']['title'])}</title><link rel='stylesheet' href='/docs.css'>",
        "<link rel='icon' href='/static/favicon.svg' type='image/svg+xml'></head><body>",
        f"<header><h1>{esc(spec['info']['title'])} <small>{esc(spec['info']['version'])}</small></h1></header><main>",
        f"<p>{esc(spec['info']['description'])}</p>",
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). "
        "Examples: <code>docs/api.md</code>.</p>",
    ]
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            role = op.get("x-firegrid-role", "public")
            parts.append(f"<section class='op' id='{esc(op['operationId'])}'>")
            parts.append(f"<span class='role'>role: {esc(role)}</span>")
            parts.append(
                f"<h3><span class='method {method.upper()}'>{method.upper()}</span><code>{esc(path)}</code></h3>"
            )
            parts.append(f"<p><b>{esc(op['summary'])}</b></p>")
            if op.get("description"):
                parts.append(f"<p>{esc(op['description'])}</p>")
            if op["parameters"]:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>schema</th><th>description</th></tr>")
                for p in op["parameters"]:
                    parts.append(
                        f"<tr><td><code>{esc(p['name'])}</code>{' *' if p.get('required') else ''}</td>"
                        f"<td>{esc(p['in'])}</td><td><code>{esc(_schema_text(p['schema']))}</code></td>"
                        f"<td>{esc(p.get('description', ''))}</td></tr>"
                    )
                parts.append("</table>")
            body = op.get("requestBody")
            if body and "application/json" in body["content"]:
                name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                parts.append(f"<p>Body: <a href='#schema-{esc(name)}'>{esc(name)}</a> (JSON)</p>")
            elif body:
                parts.append(f"<p>Body: {esc(', '.join(body['content']))} (binary)</p>")
            codes = ", ".join(
                f"<code>{esc(code)}</code>" + (_ref_link(resp) if code.startswith("2") else "")
                for code, resp in op["responses"].items()
            )
            parts.append(f"<p>Responses: {codes}</p></section>")
    parts.append("<h2>Schemas</h2>")
    import json

    for name, schema in spec["components"]["schemas"].items():
        parts.append(
            f"<details id='schema-{esc(name)}'><summary>{esc(name)}</summary>"
            f"<pre>{esc(json.dumps(schema, indent=2, ensure_ascii=False))}</pre></details>"
        )
    parts.append("</main></body></html>")
    return "".join(parts)


def _ref_link(resp: dict[str, Any]) -> str:
    for media in resp.get("content", {}).values():
        target = media.get("schema", {}).get("$ref")
        if target:
            name = target.rsplit("/", 1)[1]
            return f" → <a href='#schema-{html.escape(name)}'>{html.escape(name)}</a>"
    return ""


def _schema_text(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    if "anyOf" in schema:
        return " | ".join(_schema_text(s) for s in schema["anyOf"])
    text = str(schema.get("type", "any"))
    if "enum" in schema:
        text += " " + "/".join(str(x) for x in schema["enum"])
    for key in ("minimum", "maximum", "pattern", "format"):
        if key in schema:
            text += f" {key}={schema[key]}"
    if "default" in schema:
        text += f" (default {schema['default']})"
    return text
