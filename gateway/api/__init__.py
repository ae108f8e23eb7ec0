"""firegrid's HTTP API (``/api/v1``), its OpenAPI document, the docs page and the dashboard.

Mounting (gateway engineer): either take the whole application::

    app = create_api_app(runtime)            # then add /healthz, /readyz, /metrics to it
    web.run_app(app, host=..., port=...)

or add everything to an application you already built (before it starts)::

    setup_api(app, runtime)

``runtime`` is the object described in ``gateway/api/deps.py``.  ``runtime.hub`` should be a
:class:`gateway.api.hub.Hub` that the gateway also publishes device status changes to
(``hub.publish("device", {"building": ..., "device": ..., "online": ..., "ts_ms": ...})``); when the runtime has no
hub, one is created and set as ``runtime.hub``.  Alert lifecycle changes reach the hub through
``runtime.store.add_listener``, registered here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from alerts.records import AlertRecord, IncidentRecord
from alerts.store import AlertChange
from gateway.api import routes as _routes  # noqa: F401 - registers the operations
from gateway.api import views
from gateway.api.auth import TokenAuthenticator
from gateway.api.framework import (
    API_PREFIX,
    AUTH_KEY,
    BODY_LIMIT_KEY,
    add_operations,
    problem_middleware,
    problem_response,
)
from gateway.api.hub import Hub
from gateway.api.openapi import DOCS_CSS, build_openapi, render_docs
from gateway.api.routes import STATE_KEY, ApiState

__all__ = ["STATIC_DIR", "Hub", "create_api_app", "setup_api"]

log = logging.getLogger("firegrid.api")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def create_api_app(runtime: Any, *, clock_ms: Callable[[], int] | None = None) -> web.Application:
    """A new aiohttp application serving the API, ``/openapi.json``, ``/docs`` and the dashboard at ``/``."""
    limit = _body_limit(runtime)
    # aiohttp's own limit is a backstop for handlers that read bodies themselves (the inbound SMS webhook).
    app = web.Application(client_max_size=limit, middlewares=[problem_middleware])
    _install(app, runtime, clock_ms=clock_ms, limit=limit)
    return app


def setup_api(app: web.Application, runtime: Any, *, clock_ms: Callable[[], int] | None = None) -> None:
    """Add the API, docs and dashboard to an existing application (call before it starts)."""
    app.middlewares.append(problem_middleware)
    _install(app, runtime, clock_ms=clock_ms, limit=_body_limit(runtime))


def _body_limit(runtime: Any) -> int:
    return int(runtime.config.http.max_body_kb) * 1024


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _install(app: web.Application, runtime: Any, *, clock_ms: Callable[[], int] | None, limit: int) -> None:
    hub = getattr(runtime, "hub", None)
    if hub is None:
        hub = Hub()
        try:
            runtime.hub = hub
        except AttributeError:  # a frozen runtime: keep the hub to ourselves
            pass
    state = ApiState(runtime=runtime, hub=hub, clock_ms=clock_ms or _wall_clock_ms)
    app[STATE_KEY] = state
    app[AUTH_KEY] = TokenAuthenticator(runtime.config)
    app[BODY_LIMIT_KEY] = limit

    add_operations(app)
    _add_sms_inbound(app, runtime)

    spec = orjson.dumps(build_openapi())
    docs = render_docs(orjson.loads(spec))

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=spec, content_type="application/json")

    async def docs_page(_: web.Request) -> web.Response:
        return web.Response(text=docs, content_type="text/html")

    async def dashboard(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    app.router.add_get("/openapi.json", openapi)

    async def docs_css(_: web.Request) -> web.Response:
        # A stylesheet of its own, not inline: the Content-Security-Policy allows styles from 'self' only.
        return web.Response(text=DOCS_CSS, content_type="text/css")

    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs.css", docs_css)

    async def favicon(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Content-Type": "image/svg+xml"})

    app.router.add_get("/", dashboard)
    app.router.add_get("/favicon.ico", favicon)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, show_index=False, follow_symlinks=False)

    app.on_response_prepare.append(_security_headers)
    app.on_startup.append(_bind_hub)
    app.on_shutdown.append(_close_hub)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path.startswith(API_PREFIX):
        headers.setdefault("Cache-Control", "no-store")
    else:
        headers.setdefault("Content-Security-Policy", _CSP)
        headers.setdefault("X-Frame-Options", "DENY")


async def _bind_hub(app: web.Application) -> None:
    state = app[STATE_KEY]
    state.hub.bind(asyncio.get_running_loop())
    store = getattr(state.runtime, "store", None)
    add_listener = getattr(store, "add_listener", None)
    if add_listener is not None:
        add_listener(_store_listener(state))


async def _close_hub(app: web.Application) -> None:
    app[STATE_KEY].hub.close()


def _store_listener(state: ApiState) -> Callable[[AlertChange], None]:
    """Publish each alert-store change to the hub as an ``alert`` event.

    Called by the store, possibly inside its transaction or from a worker thread: it must never raise (that could
    abort the store's write) and never block.
    """
    grids = state.building_grids

    def on_change(change: AlertChange) -> None:
        try:
            kind = views.as_str(change.type, 64) or "alert.changed"
            record = change.record
            event: dict[str, Any] = {"change": kind, "ts_ms": change.ts_ms}
            if kind.startswith("incident."):
                incident = views.incident(record, building_grids=grids) if isinstance(record, IncidentRecord) else None
                event["building"] = incident.building if incident else None
                event["incident"] = incident.model_dump(mode="json") if incident else None
                state.hub.publish("incident", event)
                return
            alert = views.alert(record, building_grids=grids) if isinstance(record, AlertRecord) else None
            event["building"] = alert.building if alert else views.as_str(change.data.get("building"))
            event["alert"] = alert.model_dump(mode="json") if alert else None
            state.hub.publish("alert", event)
        except Exception:  # never let the dashboard break an alert write
            log.exception("could not publish an alert change to the live stream")

    return on_change


def _add_sms_inbound(app: web.Application, runtime: Any) -> None:
    """``POST /api/v1/sms/inbound``: acknowledge by SMS reply (``alerts.inbound.handle_inbound_sms``).

    It authenticates by the provider's signature, not by bearer token, so it is not part of the bearer-token
    OpenAPI surface (see ``alerts/inbound.py`` and ``docs/alerts.md``).
    """
    from alerts.inbound import handle_inbound_sms

    async def sms_inbound(request: web.Request) -> web.StreamResponse:
        store = getattr(runtime, "store", None)
        if store is None:
            return problem_response(503, detail="inbound SMS is not available", instance=request.path)
        limit = request.app[BODY_LIMIT_KEY]
        if request.content_length is not None and request.content_length > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            return problem_response(413, detail=f"the limit is {limit} bytes", instance=request.path)
        state = request.app[STATE_KEY]
        result = await asyncio.to_thread(
            handle_inbound_sms,
            store,
            headers=dict(request.headers),
            body=body,
            url=str(request.url),
            now_ms=state.clock_ms(),
        )
        if result.status >= 400:
            return problem_response(result.status, detail=result.message, instance=request.path)
        payload = {
            "message": result.message,
            "acknowledged": list(result.acknowledged),
            "incident_id": result.incident_id,
        }
        return web.json_response(payload, status=result.status)

    app.router.add_post(API_PREFIX + "/sms/inbound", sms_inbound)
