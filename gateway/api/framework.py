"""The small framework the API routes are written in: declared operations, validation, problem documents.

Every route is declared once with :func:`operation` — method, path, role, and the pydantic models of its query
string, body and response.  The same declaration drives

* the request pipeline (:func:`_wrap`): authenticate → authorise → validate path, query and body → call → serialise;
* the OpenAPI document (``gateway/api/openapi.py`` reads :data:`OPERATIONS`).

Errors are RFC 9457 problem documents (``application/problem+json``).  Anything unexpected is caught by
:func:`problem_middleware` and becomes a 500 problem without a traceback leaking to the client, but the routes are
written so that no input reaches that path.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, TypeAdapter, ValidationError

from common.ids import ID_SCHEMA
from gateway.api.auth import AuthError, Principal, Role, TokenAuthenticator
from gateway.api.models import FieldError, NoQuery, Problem, Query

log = logging.getLogger("firegrid.api")

API_PREFIX = "/api/v1"
PROBLEM_JSON = "application/problem+json"

AUTH_KEY: web.AppKey[TokenAuthenticator] = web.AppKey("firegrid_auth", TokenAuthenticator)
BODY_LIMIT_KEY: web.AppKey[int] = web.AppKey("firegrid_body_limit", int)


class ApiError(Exception):
    """An error with an HTTP status, rendered as a problem document."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = "about:blank",
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type
        self.errors = errors
        self.headers = dict(headers or {})


def problem_response(
    status: int,
    *,
    detail: str | None = None,
    title: str | None = None,
    type: str = "about:blank",
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    problem = Problem(type=type, title=title or phrase, status=status, detail=detail, instance=instance, errors=errors)
    body = orjson.dumps(problem.model_dump(mode="json", exclude_none=True))
    response = web.Response(status=status, body=body, headers=dict(headers or {}))
    response.content_type = PROBLEM_JSON
    return response


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turn every failure into a problem document: router 404/405, aiohttp's own 413, and the unexpected."""
    try:
        return await handler(request)
    except ApiError as exc:
        return problem_response(
            exc.status,
            detail=exc.detail,
            title=exc.title,
            type=exc.type,
            instance=request.path,
            errors=exc.errors,
            headers=exc.headers,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after", "location")}
        detail = {
            404: f"no such resource: {request.path[:200]}",
            405: f"method {request.method} is not allowed here",
            413: "the request body is too large",
        }.get(exc.status, exc.text if exc.text and not exc.text.startswith(str(exc.status)) else None)
        return problem_response(exc.status, detail=detail, instance=request.path, headers=headers)
    except (ConnectionResetError, TimeoutError):
        raise
    except Exception:
        # Deliberately not logging the request headers: they carry the bearer token.
        log.exception("unhandled error in %s %s", request.method, request.path[:200])
        return problem_response(500, detail="internal error; see the gateway log", instance=request.path)


# --- operations --------------------------------------------------------------------------------------------------

Handler = Callable[["Call"], Awaitable[BaseModel | web.StreamResponse]]


@dataclass(frozen=True)
class PathParam:
    name: str
    adapter: TypeAdapter[Any]
    schema: dict[str, Any]
    description: str


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # relative to /api/v1, e.g. "/alerts/{id}"
    handler: Handler
    summary: str
    description: str
    tag: str
    role: Role | None  # None: no bearer token needed
    query: type[Query]
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    path_params: tuple[PathParam, ...]
    stream: bool = False
    operation_id: str = ""
    # Media types the 200 answer may have besides JSON (a report as PDF, an export as CSV), when the query asks.
    files: tuple[str, ...] = ()
    # Operations whose request or response is not JSON (a photo): the media types, documented as binary.  A handler
    # with ``request_media`` reads ``call.request`` itself, under its own size limit.
    request_media: tuple[str, ...] = ()
    response_media: tuple[str, ...] = ()

    @property
    def full_path(self) -> str:
        return API_PREFIX + self.path


OPERATIONS: list[Operation] = []

_ID_ADAPTER: TypeAdapter[str] = TypeAdapter(str)


def id_param(name: str, description: str) -> PathParam:
    return PathParam(name=name, adapter=_ID_ADAPTER, schema=dict(ID_SCHEMA), description=description)


def operation(
    method: str,
    path: str,
    *,
    summary: str,
    tag: str,
    role: Role | None = "viewer",
    query: type[Query] = NoQuery,
    body: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    errors: tuple[int, ...] = (),
    path_params: tuple[PathParam, ...] = (),
    stream: bool = False,
    files: tuple[str, ...] = (),
    request_media: tuple[str, ...] = (),
    response_media: tuple[str, ...] = (),
) -> Callable[[Handler], Handler]:
    """Declare an API operation (see the module docstring)."""

    def register(handler: Handler) -> Handler:
        base_errors = {400, 503}
        if role is not None:
            base_errors |= {401, 403}
        if body is not None or request_media:
            base_errors |= {413, 415, 422}
        if path_params:
            base_errors.add(404)
        OPERATIONS.append(
            Operation(
                method=method.upper(),
                path=path,
                handler=handler,
                summary=summary,
                description=(handler.__doc__ or "").strip(),
                tag=tag,
                role=role,
                query=query,
                body=body,
                response=response,
                status=status,
                errors=tuple(sorted(base_errors | set(errors))),
                path_params=path_params,
                stream=stream,
                operation_id=handler.__name__.strip("_"),
                files=files,
                request_media=request_media,
                response_media=response_media,
            )
        )
        return handler

    return register


@dataclass
class Call:
    """Everything a handler needs about one request, already validated."""

    request: web.Request
    principal: Principal | None
    query: Any
    body: Any
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def who(self) -> Principal:
        assert self.principal is not None
        return self.principal

    @property
    def app(self) -> web.Application:
        return self.request.app


def _errors_from(exc: ValidationError, where: str) -> list[FieldError]:
    out: list[FieldError] = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False)[:20]:
        loc = ".".join(str(p) for p in error["loc"] if p not in ("function-after", "function-before"))
        # Union members show up as loc parts ('int', 'datetime'): keep only the field names people wrote.
        parts = [p for p in loc.split(".") if p and not p.startswith(("constrained-", "lax-", "json-or-python"))]
        out.append(FieldError(loc=".".join([where, *parts[:2]]), message=str(error["msg"])[:300]))
    return out


def _parse_query(op: Operation, request: web.Request) -> Any:
    raw: dict[str, str] = {}
    for key in request.query.keys():
        values = request.query.getall(key)
        if len(values) > 1:
            raise ApiError(400, f"query parameter {key[:64]!r} given {len(values)} times; give it once")
        raw[key] = values[0]
    try:
        return op.query.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(
            400,
            "invalid query parameters",
            type="urn:firegrid:problem:invalid-query",
            errors=_errors_from(exc, "query"),
        ) from None


async def _parse_body(op: Operation, request: web.Request) -> Any:
    assert op.body is not None
    limit = request.app[BODY_LIMIT_KEY]
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the request body is {request.content_length} bytes; the limit is {limit}")
    mime = request.content_type  # without parameters; '' when the header is missing
    if mime not in ("application/json", ""):
        raise ApiError(415, f"the body must be application/json, not {mime[:100]!r}")
    data = await request.content.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, f"the request body is larger than the limit of {limit} bytes")
    if not data.strip():
        data = b"{}"  # POST /ack with no body: every field is optional
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ApiError(
            400, f"the body is not valid JSON: {str(exc)[:200]}", type="urn:firegrid:problem:bad-json"
        ) from None
    if not isinstance(document, dict):
        raise ApiError(422, "the body must be a JSON object", type="urn:firegrid:problem:invalid-body")
    try:
        return op.body.model_validate(document)
    except ValidationError as exc:
        raise ApiError(
            422, "invalid request body", type="urn:firegrid:problem:invalid-body", errors=_errors_from(exc, "body")
        ) from None


def json_response(model: BaseModel, *, status: int = 200) -> web.Response:
    body = orjson.dumps(model.model_dump(mode="json"), option=orjson.OPT_NON_STR_KEYS)
    response = web.Response(status=status, body=body)
    response.content_type = "application/json"
    return response


def authenticate(request: web.Request) -> Principal:
    authenticator = request.app[AUTH_KEY]
    try:
        return authenticator.authenticate(request.headers.get("Authorization"))
    except AuthError as exc:
        detail = str(exc)
        if not authenticator.configured:
            detail = "no API tokens are configured (http.tokens); the API is closed"
        raise ApiError(
            401,
            detail,
            type="urn:firegrid:problem:unauthorized",
            headers={"WWW-Authenticate": 'Bearer realm="firegrid"'},
        ) from None


def _wrap(op: Operation) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        principal: Principal | None = None
        if op.role is not None:
            principal = authenticate(request)
            if not principal.has_role(op.role):
                raise ApiError(
                    403,
                    f"this needs the {op.role} role; token {principal.name!r} has {principal.role}",
                    type="urn:firegrid:problem:forbidden",
                )
        params: dict[str, Any] = {}
        for param in op.path_params:
            raw = request.match_info.get(param.name, "")
            try:
                params[param.name] = param.adapter.validate_python(raw)
            except ValidationError:
                raise ApiError(400, f"invalid path parameter {param.name!r}") from None
            if isinstance(params[param.name], str) and not _ID_RE_OK(params[param.name]):
                raise ApiError(404, f"no {param.name} {raw[:64]!r}")
        query = _parse_query(op, request)
        body = await _parse_body(op, request) if op.body is not None else None
        result = await op.handler(Call(request=request, principal=principal, query=query, body=body, params=params))
        if isinstance(result, web.StreamResponse):
            return result
        return json_response(result, status=op.status)

    handle.__name__ = op.operation_id
    return handle


def _ID_RE_OK(value: str) -> bool:
    return 1 <= len(value) <= 64 and all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in value)


def add_operations(app: web.Application) -> None:
    for op in OPERATIONS:
        app.router.add_route(op.method, op.full_path, _wrap(op))
