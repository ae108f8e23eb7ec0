"""Operations routes: ``/healthz`` (the process answers), ``/readyz`` (it can do its job) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api.runtime import Runtime


def readiness(runtime: Runtime) -> tuple[bool, dict[str, Any]]:
    """Ready = MQTT connected, the store writable, and InfluxDB reachable or the spool taking the points."""
    checks: dict[str, Any] = {}
    mqtt = runtime.mqtt
    events = runtime.mqtt_events
    if runtime.cluster_status is not None:
        # cluster mode: the partition sessions of the leases held, not the single gateway's two sessions
        checks["cluster"] = runtime.cluster_status()
    else:
        checks["mqtt"] = {"ok": bool(mqtt and mqtt.connected), "error": None if mqtt is None else mqtt.last_error}
    if events is not None and runtime.cluster_status is None:
        # with the fast lane on, call points and alarm events come by this session only: without it they wait
        checks["mqtt_events"] = {"ok": events.connected, "error": events.last_error}
    store_ok = runtime.presence is not None and runtime.presence.writable()
    pipeline = runtime.pipeline
    if pipeline is not None and pipeline.commit_error:
        store_ok = False
    checks["store"] = {"ok": store_ok, "error": None if pipeline is None else pipeline.commit_error}
    writer = runtime.influx
    if writer is None:
        checks["influx"] = {"ok": True, "mode": "disabled (telemetry kept in the local store)"}
    else:
        spool = writer.spool
        spooling = spool.size_bytes < spool.max_bytes
        checks["influx"] = {
            "ok": writer.reachable or spooling,
            "reachable": writer.reachable,
            "spooling": not writer.reachable,
            "spool_points": spool.pending_points,
            "error": writer.last_error,
        }
    ok = all(check["ok"] for check in checks.values())
    return ok, checks


def add_ops_routes(app: web.Application, runtime: Runtime) -> None:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ok, checks = readiness(runtime)
        return web.json_response({"ready": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics(_request: web.Request) -> web.Response:
        response = web.Response(body=runtime.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
