"""``firegrid console --config FILE [--listen HOST:PORT]``: one city-wide screen over the shared store.

The same HTTP API, tokens and dashboard as ``firegrid run``, for every building of the config, served from the store
alone: no MQTT, no rules engine, no notifier, no timers, nothing of its own beyond caches, so any number of consoles
may run beside the gateways that write the store.  What it reads:

* lists and details: the alert store's tables, as the gateway's API reads them;
* devices and their presence: the presence table the gateways flush (``gateway_devices``), mirrored every second
  (:class:`gateway.service.console_feed.PresenceMirror`);
* the live stream: the store's change log (:class:`gateway.service.console_feed.ChangeFeed`), written in the
  transaction of every alert and incident change, whoever made it.

Operator actions (acknowledge, dispatch, arrive, resolve, external references, hazards and inspections) are store
commands: they commit to the store, the gateway's notifier finds their outbox rows and stops escalating on its next
round, and every console sees them through the change log.  What needs a gateway's own memory answers
``409 {"error", "reason"}`` (:data:`UNAVAILABLE`, docs/deploy.md "City-wide console").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from alerts.inspections.store import InspectionStore
from alerts.records import AlertChange
from alerts.store import AlertStore
from common.migrations import SchemaError
from gateway.api import create_api_app
from gateway.api.framework import API_PREFIX
from gateway.api.hub import Hub
from gateway.api.routes.state import STATE_KEY
from gateway.api.routes.stream import render_change
from gateway.api.runtime import Runtime
from gateway.config import ConfigError, FiregridConfig, exit_with_problems, load_or_exit
from gateway.metrics import Metrics
from gateway.service.console_feed import ChangeFeed, ChangeRow, PresenceMirror, source_for
from gateway.service.logs import setup_logging
from gateway.service.supervise import until_stop_or_failure
from gateway.storage.inspections import InspectionDeadlines
from gateway.storage.presence import Presence
from rules.types import AlertTransition

log = logging.getLogger("firegrid.console")

_ENGINE = (
    "maintenance windows live in the rules engine of the gateway that owns the building; open, list and close them"
    " on that gateway"
)
_INGEST = "telemetry enters through a gateway's pipeline; push it to the gateway that owns the building"

# (method, route as registered) -> why the console cannot answer it: each needs a gateway's in-process state.
UNAVAILABLE: dict[tuple[str, str], str] = {
    ("GET", f"{API_PREFIX}/maintenance"): _ENGINE,
    ("POST", f"{API_PREFIX}/maintenance"): _ENGINE,
    ("DELETE", f"{API_PREFIX}/maintenance/{{id}}"): _ENGINE,
    ("GET", f"{API_PREFIX}/rejections"): "rejected messages are counted in the memory of the gateway that read them",
    ("GET", f"{API_PREFIX}/ingest/onenet"): _INGEST,
    ("POST", f"{API_PREFIX}/ingest/onenet"): _INGEST,
    ("POST", f"{API_PREFIX}/ingest/ctwing"): _INGEST,
    ("POST", f"{API_PREFIX}/ingest/{{building}}/{{device}}/{{channel}}"): _INGEST,
}


def _listen(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not HOST:PORT")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file (the district's, all buildings)")
    parser.add_argument("--listen", type=_listen, help="HOST:PORT for the API and dashboard (default: http.listen)")


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    setup_logging(level=config.log.level, fmt=config.log.format)
    config = district(config, listen=args.listen)
    try:
        return asyncio.run(serve(config))
    except ConfigError as exc:
        exit_with_problems(exc.problems)
    except SchemaError as exc:  # a store from a newer release: nothing was changed
        exit_with_problems([str(exc)])
    except KeyboardInterrupt:
        return 130


def district(config: FiregridConfig, *, listen: str | None = None) -> FiregridConfig:
    """The config as a console sees it: every building (a gateway's ``mqtt.buildings`` does not narrow it) and, with
    ``listen``, its own address."""
    update: dict[str, Any] = {}
    if config.mqtt.buildings:
        update["mqtt"] = config.mqtt.model_copy(update={"buildings": None})
    if listen is not None:
        update["http"] = config.http.model_copy(update={"listen": listen})
    if not update:
        return config
    copy = config.model_copy(update=update)
    copy.__dict__.pop("_owned", None)  # FiregridConfig.owns caches the owned set there: not the district's
    return copy


def unavailable(method: str, route: str) -> web.Response | None:
    why = UNAVAILABLE.get((method, route))
    if why is None:
        return None
    return web.json_response(
        {"error": "not available on the console", "reason": f"not available on the console: {why}", "status": 409},
        status=409,
    )


@web.middleware
async def _console_only(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    route = request.match_info.route.resource
    refused = unavailable(request.method, route.canonical) if route is not None else None
    return refused if refused is not None else await handler(request)


class DeadlinesOfTheGateways(InspectionDeadlines):
    """Inspection deadlines as a console sees them: judged by the gateway that owns each building (its check runs
    every ``inspections.check_interval_s``), never here.  The API checks the deadlines right after an inspection
    or a hazard step; on a console that raised or cleared overdue alerts beside the owning gateway's own check, so
    the step's effect on an overdue alert shows at that gateway's next check instead."""

    async def check(self, *, now_ms: int | None = None) -> list[AlertTransition]:
        return []


class Console:
    """Everything ``firegrid console`` runs, so tests can run it in-process too."""

    def __init__(self, config: FiregridConfig) -> None:
        url = config.store.url  # PostgreSQL (cluster mode): the feed LISTENs, presence reads the same store
        self.config = config
        self.metrics = Metrics()
        db_path = config.resolve_path(config.store.path)
        self.store = AlertStore.from_config(config)
        self.presence = Presence(config=config, db_path=db_path)
        self.hub = Hub()
        self.runtime = Runtime(
            config=config,
            metrics=self.metrics,
            store=self.store,
            presence=self.presence,
            hub=self.hub,
            started_ms=int(time.time() * 1000),
            live_from_store=True,
        )
        self.runtime.inspections = InspectionStore(self.store, config=config.inspections)
        self.runtime.deadlines = DeadlinesOfTheGateways(
            config=config, store=self.runtime.inspections, presence=self.presence
        )
        self.app = create_api_app(self.runtime)
        self.app.middlewares.append(_console_only)
        self._add_routes()
        self.feed = ChangeFeed(source=source_for(path=db_path, url=url), publish=self._publish)
        self.mirror = PresenceMirror(self.presence, target=url or db_path, config=config)
        hub = self.hub

        def device_changed(device: dict[str, Any]) -> None:
            hub.publish("device", {**device, "device": device["id"], "ts_ms": int(time.time() * 1000)})

        self.presence.on_change = device_changed
        self._stop = asyncio.Event()
        self._http: web.AppRunner | None = None
        self.http_port: int | None = None

    def _add_routes(self) -> None:
        async def refused(request: web.Request) -> web.StreamResponse:
            response = unavailable(request.method, request.match_info.route.resource.canonical)  # type: ignore[union-attr]
            assert response is not None
            return response

        for method, route in UNAVAILABLE:
            if route.startswith(f"{API_PREFIX}/ingest/"):  # not mounted on the console: answer them anyway
                self.app.router.add_route(method, route, refused)

        async def healthz(_request: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_request: web.Request) -> web.Response:
            checks = {
                "store": {"ok": self.feed.healthy, "error": self.feed.last_error},
                "presence": {"ok": self.mirror.last_error is None, "error": self.mirror.last_error},
            }
            ok = all(c["ok"] for c in checks.values())
            return web.json_response({"ready": ok, "role": "console", "checks": checks}, status=200 if ok else 503)

        async def metrics(_request: web.Request) -> web.Response:
            response = web.Response(body=self.metrics.render())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        self.app.router.add_get("/healthz", healthz)
        self.app.router.add_get("/readyz", readyz)
        self.app.router.add_get("/metrics", metrics)

    def _publish(self, row: ChangeRow) -> None:
        data: dict[str, Any] = dict(row.data)
        if data.get(row.kind) is None:
            # written by a process without the HTTP API (the store renders nothing then): render the record now
            data = self._render(row) or data
        self.hub.publish(row.kind, data)

    def _render(self, row: ChangeRow) -> dict[str, Any] | None:
        record: Any = None
        if row.kind == "incident" and row.incident_id is not None:
            detail = self.store.get_incident(row.incident_id)
            record = None if detail is None else detail.incident
        elif row.alert_id is not None:
            record = self.store.get_alert(row.alert_id)
        if record is None:
            return None
        change = AlertChange(
            str(row.data.get("change") or f"{row.kind}.updated"), row.alert_id, row.incident_id, row.ts_ms, {}, record
        )
        return render_change(self.app[STATE_KEY], change)[1]

    def request_stop(self) -> None:
        self._stop.set()

    async def start_http(self) -> None:
        self._http = web.AppRunner(self.app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.config.http.host, self.config.http.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http.port

    async def run(self) -> int:
        # The feed's starting point first, so nothing committed after the HTTP API answers is missed
        await self.feed.start()
        await self.mirror.refresh()
        await self.start_http()
        log.info(
            "console listening on %s:%s: %d buildings, %d registered devices, following the store's change log",
            self.config.http.host,
            self.http_port,
            len(self.config.buildings),
            len(self.config.devices),
        )
        tasks = {
            "change-feed": asyncio.create_task(self.feed.run(), name="change-feed"),
            "presence": asyncio.create_task(self.mirror.run(), name="presence"),
        }
        try:
            exit_code = await until_stop_or_failure(tasks, self._stop, log=log)
        finally:
            await self._shutdown(tasks)
        return exit_code

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        log.info("shutting down")
        self.feed.stop()
        for task in tasks.values():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._http is not None:
            await self._http.cleanup()  # ends the live streams (the hub closes) and open requests
        await self.close()
        log.info("stopped")

    async def close(self) -> None:
        await self.feed.close()
        self.mirror.close()
        self.presence.close()
        self.store.close()


async def serve(config: FiregridConfig) -> int:
    console = Console(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, console.request_stop)
    return await console.run()
