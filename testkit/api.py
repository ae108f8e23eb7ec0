"""Helpers to run the HTTP API on real parts outside ``firegrid run``: used by the API and dashboard tests and handy
for poking at the dashboard by hand (``python -m testkit.api examples/community.yaml``).

:func:`build_runtime` assembles the same components the gateway service uses — a real :class:`AlertStore` on
SQLite, real :class:`Presence`, :class:`Rejections`, the rules :class:`Engine` and an SSE :class:`Hub` — without
MQTT.  :class:`ServerThread` serves an application on a free loopback port from a background thread, for clients
that are synchronous (Playwright, schemathesis).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from alerts.records import AlertChange
from alerts.store import AlertStore
from gateway.api.hub import Hub
from gateway.api.runtime import Runtime
from gateway.config import FiregridConfig, parse_config
from gateway.ingest.contract import registry_from_config
from gateway.ingest.rejections import Rejections
from gateway.metrics import Metrics
from gateway.storage.influx import InfluxWriter
from gateway.storage.presence import Presence
from rules.engine import Engine
from rules.loader import load_rule_set


def config_for_tests(source: Path, workdir: Path, **overrides: Any) -> FiregridConfig:
    """``source`` (a config YAML) with its store moved into ``workdir`` and no InfluxDB, plus ``overrides`` (new
    ``buildings`` drop the source's inspection points, unless ``inspection_points`` is given too)."""
    data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
    data["store"] = {"path": str(workdir / "firegrid.sqlite")}
    data["influx"] = {"url": None}
    if "buildings" in overrides and "inspection_points" not in overrides:
        # the source's inspection points belong to the source's buildings: a test that brings its own buildings
        # does not bring them along
        data.pop("inspection_points", None)
    data.update(overrides)
    return parse_config(data, base_dir=workdir)


def build_runtime(config: FiregridConfig, *, influx: InfluxWriter | None = None) -> Runtime:
    metrics = Metrics()
    presence = Presence(config=config, db_path=config.resolve_path(config.store.path))
    if influx is None:
        presence.keep_history = True
    hub = Hub(heartbeat_s=2.0)

    # As gateway/service/service.py wires it: presence changes (online/offline) become "device" events.
    def on_change(device: dict[str, Any]) -> None:
        hub.publish("device", device)

    presence.on_change = on_change
    presence.sweep(now_ms=now_ms())  # the first look is not a change
    return Runtime(
        config=config,
        metrics=metrics,
        store=AlertStore.from_config(config),
        presence=presence,
        rejections=Rejections(metrics=metrics),
        influx=influx,
        engine=Engine(load_rule_set(config), registry=registry_from_config(config)),
        hub=hub,
    )


def now_ms() -> int:
    import time

    return time.time_ns() // 1_000_000


def inject(runtime: Runtime, device: str, values: dict[str, Any], *, ts_ms: int | None = None) -> list[AlertChange]:
    """Feed one reading through presence, the real rules engine and the real alert store, as the pipeline does.
    Returns the store's changes (their listeners — the SSE hub — have been called)."""
    from gateway.ingest.contract import registry_from_config
    from rules.types import Reading

    ts = now_ms() if ts_ms is None else ts_ms
    ref = registry_from_config(runtime.config)[device]
    reading = Reading(ref=ref, ts_ms=ts, values=values)
    presence, engine, store = _parts(runtime)
    presence.reading(reading)
    return list(store.apply(engine.process(reading), now_ms=ts))


def tick(runtime: Runtime, at_ms: int) -> list[AlertChange]:
    """Advance the engine's timers (``for:``, absence, clear_after) to ``at_ms`` and store what they decide."""
    _presence, engine, store = _parts(runtime)
    return list(store.apply(engine.tick(at_ms), now_ms=at_ms))


def _parts(runtime: Runtime) -> tuple[Presence, Engine, AlertStore]:
    assert runtime.presence is not None and runtime.engine is not None and runtime.store is not None
    return runtime.presence, runtime.engine, runtime.store


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """Serve ``make_app()`` on 127.0.0.1:<free port> from a private event loop in a daemon thread."""

    def __init__(self, make_app: Callable[[], web.Application]) -> None:
        self._make_app = make_app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="api-server", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> ServerThread:
        self._thread.start()
        self.run(self._start())
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self._make_app(), shutdown_timeout=2.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            self.run(self._runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - manual use
    import sys
    import tempfile

    from gateway.api import create_api_app

    workdir = Path(tempfile.mkdtemp(prefix="firegrid-api-"))
    config = config_for_tests(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/community.yaml"), workdir)
    runtime = build_runtime(config)
    web.run_app(create_api_app(runtime), host="127.0.0.1", port=int(sys.argv[2]) if len(sys.argv) > 2 else 8080)


if __name__ == "__main__":  # pragma: no cover
    main()
