"""firegrid's HTTP API (``/api/v1``), its OpenAPI document, the docs page and the dashboard.

Mounting: either take the whole application::

    app = create_api_app(runtime)            # then add /healthz, /readyz, /metrics to it
    web.run_app(app, host=..., port=...)

or add everything to an application you already built (before it starts)::

    setup_api(app, runtime)

``runtime`` is the gateway's :class:`gateway.api.runtime.Runtime`.  ``runtime.hub`` should be a
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

import orjson
from aiohttp import web

from gateway.api import routes as _routes  # noqa: F401 - registers the operations
from gateway.api.auth import TokenAuthenticator
from gateway.api.framework import (
    API_PREFIX,
    AUTH_KEY,
    BODY_LIMIT_KEY,
    add_operations,
    problem_middleware,
)
from gateway.api.hub import Hub
from gateway.api.inspection_parts import PARTS_KEY
from gateway.api.inspection_parts import install as install_inspections
from gateway.api.mobile import add_mobile_routes
from gateway.api.openapi import DOCS_CSS, EXTRA_PATHS_KEY, ExtraPaths, build_openapi, render_docs
from gateway.api.routes.links import add_action_links
from gateway.api.routes.sms import add_sms_inbound
from gateway.api.routes.state import STATE_KEY, ApiState
from gateway.api.routes.stream import Renderings, inspection_listener, store_listener
from gateway.api.routes.voice import add_voice_receipts
from gateway.api.runtime import Runtime

__all__ = ["STATIC_DIR", "Hub", "create_api_app", "setup_api"]

log = logging.getLogger("firegrid.api")

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
RENDERINGS_KEY: web.AppKey[Renderings] = web.AppKey("firegrid_renderings", Renderings)

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def create_api_app(runtime: Runtime, *, clock_ms: Callable[[], int] | None = None) -> web.Application:
    """A new aiohttp application serving the API, ``/openapi.json``, ``/docs`` and the dashboard at ``/``."""
    limit = _body_limit(runtime)
    # aiohttp's own limit is a backstop for handlers that read bodies themselves (the inbound SMS webhook).
    app = web.Application(client_max_size=limit, middlewares=[problem_middleware])
    _install(app, runtime, clock_ms=clock_ms, limit=limit)
    return app


def setup_api(app: web.Application, runtime: Runtime, *, clock_ms: Callable[[], int] | None = None) -> None:
    """Add the API, docs and dashboard to an existing application (call before it starts)."""
    app.middlewares.append(problem_middleware)
    _install(app, runtime, clock_ms=clock_ms, limit=_body_limit(runtime))


def _body_limit(runtime: Runtime) -> int:
    return int(runtime.config.http.max_body_kb) * 1024


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _install(app: web.Application, runtime: Runtime, *, clock_ms: Callable[[], int] | None, limit: int) -> None:
    hub = runtime.hub
    if hub is None:
        hub = Hub()
        try:
            runtime.hub = hub
        except AttributeError:  # a frozen runtime: keep the hub to ourselves
            pass
    state = ApiState(runtime=runtime, hub=hub, clock_ms=clock_ms or _wall_clock_ms)
    app[STATE_KEY] = state
    renderings = app[RENDERINGS_KEY] = Renderings(state, keep=not runtime.live_from_store)
    if runtime.store is not None:
        # The store's change log carries each change as this API's live stream sends it (firegrid console)
        runtime.store.core.change_renderer = renderings.for_log
    app[AUTH_KEY] = TokenAuthenticator(runtime.config)
    app[BODY_LIMIT_KEY] = limit

    add_operations(app)
    add_sms_inbound(app, runtime)
    install_inspections(app, runtime, clock_ms=state.clock_ms)
    add_mobile_routes(app)
    add_voice_receipts(app, runtime)
    add_action_links(app, runtime)

    # Built on first use, not here: routes mounted after this (the service's ingest endpoints) add their own path
    # items to app[EXTRA_PATHS_KEY] before the app starts.
    app[EXTRA_PATHS_KEY] = []
    built: list[tuple[bytes, str]] = []

    def documents() -> tuple[bytes, str]:
        if not built:
            extra: list[ExtraPaths] = app[EXTRA_PATHS_KEY]
            document = build_openapi(extra)
            spec = orjson.dumps(document)
            built.append((spec, render_docs(orjson.loads(spec))))
        return built[0]

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=documents()[0], content_type="application/json")

    async def docs_page(_: web.Request) -> web.Response:
        return web.Response(text=documents()[1], content_type="text/html")

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
    store = state.runtime.store
    if store is not None and not state.runtime.live_from_store:
        store.add_listener(store_listener(state, app[RENDERINGS_KEY]))
    parts = app.get(PARTS_KEY)
    if parts is not None:
        parts.store.add_listener(inspection_listener(state))


async def _close_hub(app: web.Application) -> None:
    app[STATE_KEY].hub.close()
