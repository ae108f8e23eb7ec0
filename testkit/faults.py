"""Fault injection for reliability tests and the soak bench: real HTTP servers that misbehave on purpose.

* :class:`ThreadedApp` runs an aiohttp application on its own event loop in a background thread, so tests that
  drive ``firegrid run`` as a subprocess (and block while polling) can still serve HTTP.
* :class:`InfluxFaultProxy` sits in front of a REAL InfluxDB and forwards ``/write``, ``/query`` and ``/ping``.  A
  script of faults is applied to the next writes (``503`` with ``Retry-After``, ``429``, ``hang``), and "poison"
  markers make every batch containing a marked line fail the way InfluxDB fails: ``400 partial write`` (the good
  lines ARE stored, like InfluxDB 1.6) or ``422`` (nothing stored).  Every attempt is logged with its time, answer
  and lines, so a test can check waits, order and what was dead-lettered.  When the upstream InfluxDB is down the
  proxy drops the client's connection (what a client sees from a dead server), rather than inventing a 502.

The Standard Webhooks receiver that counts deliveries is :class:`testkit.webhooks.WebhookCounter`.

No mocks: the gateway under test talks HTTP to these servers exactly as it would to the real ones.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from testkit.gateway import store_rows, write_config
from testkit.gateway import wait_for as wait_until  # noqa: F401  (the reliability tests and soak poll with it)
from testkit.services import free_port


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class ThreadedApp:
    """An aiohttp application served from a background thread on a free loopback port."""

    def __init__(self, app: web.Application, *, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"http-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedApp:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def call(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self._runner is not None:
            try:
                self.call(self._runner.cleanup(), timeout=10)
            except Exception:
                pass
            self._runner = None
        if self.loop.is_running():
            # a request still hanging on purpose would be destroyed pending: cancel what is left, then stop
            try:
                self.call(_cancel_others(), timeout=5)
            except Exception:
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)

    def __enter__(self) -> ThreadedApp:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


# --- InfluxDB fault proxy -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """What the proxy does with one ``/write`` instead of forwarding it.

    ``kind``: ``status`` (answer ``status`` with ``headers``/``body``) or ``hang`` (answer nothing for ``seconds``,
    then drop the connection)."""

    kind: str
    status: int = 503
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    seconds: float = 0.0

    @staticmethod
    def unavailable(retry_after: str | None = None) -> Fault:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return Fault("status", 503, headers, '{"error":"service unavailable"}')

    @staticmethod
    def too_many(retry_after: str | None = None) -> Fault:
        headers = (("Retry-After", retry_after),) if retry_after is not None else ()
        return Fault("status", 429, headers, '{"error":"too many requests"}')

    @staticmethod
    def hang(seconds: float) -> Fault:
        return Fault("hang", seconds=seconds)


@dataclass(frozen=True, slots=True)
class WriteAttempt:
    at: float  # time.monotonic() when the request arrived
    status: int  # what the proxy answered (0: connection dropped)
    lines: tuple[bytes, ...]  # the lines of the request, in order
    forwarded: tuple[bytes, ...]  # the lines that reached InfluxDB


@dataclass
class InfluxFaultProxy:
    """A reverse proxy in front of a real InfluxDB 1.x that injects write failures (see the module docstring)."""

    upstream: str
    script: list[Fault] = field(default_factory=list)
    poison_400: set[bytes] = field(default_factory=set)  # substrings marking lines answered "400 partial write"
    poison_422: set[bytes] = field(default_factory=set)  # substrings marking lines answered 422 (nothing stored)
    attempts: list[WriteAttempt] = field(default_factory=list)
    _server: ThreadedApp | None = None
    _client: aiohttp.ClientSession | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def start(self) -> InfluxFaultProxy:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/write", self._write)
        app.router.add_route("*", "/query", self._forward)
        app.router.add_route("*", "/ping", self._forward)
        app.on_cleanup.append(self._close_session)
        self._server = ThreadedApp(app).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self.script.extend(faults)

    def snapshot(self) -> list[WriteAttempt]:
        with self._lock:
            return list(self.attempts)

    async def _session(self, _app: web.Application) -> aiohttp.ClientSession:
        if self._client is None:
            self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._client

    async def _close_session(self, _app: web.Application) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _log(self, status: int, lines: list[bytes], forwarded: list[bytes]) -> None:
        with self._lock:
            self.attempts.append(WriteAttempt(time.monotonic(), status, tuple(lines), tuple(forwarded)))

    @staticmethod
    def _drop(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()  # the client sees the connection die without an answer
        return web.Response(status=599)  # never reaches the client

    async def _upstream_write(self, request: web.Request, body: bytes) -> tuple[int, bytes, dict[str, str]]:
        session = await self._session(request.app)
        async with session.post(f"{self.upstream}/write", params=request.query, data=body) as response:
            return response.status, await response.read(), dict(response.headers)

    async def _write(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        if request.headers.get("Content-Encoding") == "gzip" and raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)  # (aiohttp normally did this already)
        lines = [line for line in raw.split(b"\n") if line]
        with self._lock:
            fault = self.script.pop(0) if self.script else None
        if fault is not None and fault.kind == "hang":
            self._log(0, lines, [])
            await asyncio.sleep(fault.seconds)
            return self._drop(request)
        if fault is not None:
            self._log(fault.status, lines, [])
            return web.Response(status=fault.status, headers=dict(fault.headers), text=fault.body)
        bad_422 = [line for line in lines if any(marker in line for marker in self.poison_422)]
        if bad_422:
            # InfluxDB 2 style: the whole request is refused as unprocessable; nothing is stored.
            self._log(422, lines, [])
            first = bad_422[0].decode(errors="replace")
            return web.json_response(
                {"code": "unprocessable entity", "message": f"failure writing points: invalid field {first[:100]!r}"},
                status=422,
            )
        bad_400 = [line for line in lines if any(marker in line for marker in self.poison_400)]
        good = [line for line in lines if line not in bad_400]
        try:
            status, body, headers = await self._upstream_write(request, b"\n".join(good)) if good else (204, b"", {})
        except (TimeoutError, aiohttp.ClientError, OSError):
            self._log(0, lines, [])
            return self._drop(request)  # InfluxDB is down: the client sees its connection die
        if status >= 300:
            self._log(status, lines, [])
            return web.Response(status=status, body=body, content_type="application/json")
        if bad_400:
            # InfluxDB 1.6: one unparsable line -> "400 partial write", and the valid lines are stored.
            self._log(400, lines, good)
            first = bad_400[0].decode(errors="replace")
            return web.json_response(
                {"error": f"partial write: unable to parse '{first[:200]}': bad timestamp dropped={len(bad_400)}"},
                status=400,
            )
        self._log(status, lines, good)
        return web.Response(status=status, body=body, headers={k: v for k, v in headers.items() if k == "X-Request-Id"})

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        session = await self._session(request.app)
        body = await request.read()
        try:
            async with session.request(
                request.method, f"{self.upstream}{request.path}", params=request.query, data=body or None
            ) as response:
                payload = await response.read()
                return web.Response(
                    status=response.status, body=payload, content_type=response.content_type or "application/json"
                )
        except (TimeoutError, aiohttp.ClientError, OSError):
            return self._drop(request)


def line_ts(line: bytes) -> int:
    return int(line.rsplit(b" ", 1)[1])


def line_tag(line: bytes, tag: str) -> str | None:
    head = line.split(b" ", 1)[0].decode()
    for part in head.split(",")[1:]:
        key, _, value = part.partition("=")
        if key == tag:
            return value
    return None


def start_influx(influx: Any) -> None:
    """Start InfluxDB again on the same HTTP port.  During a long outage another process may have been given one of
    its ports as an ephemeral port: move the RPC port (nobody connects to it), wait for the HTTP port to be free."""
    for attempt in range(60):
        try:
            influx.start()
            return
        except Exception as exc:  # ServiceError from testkit/services.py
            if "address already in use" not in str(exc) or attempt == 59:
                raise
            if f":{influx.rpc_port}:" in str(exc):
                influx.rpc_port = free_port()
            else:
                time.sleep(1.0)


# --- the whole stack ------------------------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_" + __import__("base64").b64encode(b"firegrid-reliability-secret-32by").decode()

# A fire rule that clears after one quiet second, so raise -> clear -> raise cycles fit in a short test.
FAST_RULES: list[dict[str, Any]] = [
    {
        "id": "smoke-alarm",
        "kind": "state",
        "description": "smoke detector in alarm",
        "severity": "fire",
        "match": {"kind": "smoke"},
        "metric": "alarm",
        "equals": True,
        "clear_after": "1s",
    }
]


def stack_config(
    tmp_path: Any,
    *,
    mqtt_url: str,
    influx_url: str | None,
    webhook_url: str | None = None,
    devices: int = 20,
    buildings: int = 10,
    rules: list[dict[str, Any]] | None = None,
    client_id: str = "gw-rel",
    extra: dict[str, Any] | None = None,
) -> tuple[Any, int]:
    """A ``firegrid run`` config for the whole stack: MQTT, InfluxDB, the rules engine, the alert store and (with
    ``webhook_url``) a signed webhook for every event; retries fast so tests stay short."""
    sections: dict[str, Any] = {}
    if rules is not None:
        sections["rules"] = rules
    if webhook_url is not None:
        sections["notify"] = {
            "webhooks": [
                {"url": webhook_url, "secret": WEBHOOK_SECRET, "allow_private": True, "timeout_s": 2, "events": ["*"]}
            ],
            "retry": {"base_s": 0.1, "max_s": 1.0},
        }
    sections |= extra or {}
    return write_config(
        tmp_path,
        mqtt_url=mqtt_url,
        influx_url=influx_url,
        devices=devices,
        buildings=buildings,
        client_id=client_id,
        extra=sections,
    )


def alerts_rows(db: Any, *, key_like: str = "%") -> list[dict[str, Any]]:
    """Alert rows straight from the SQLite store."""
    return store_rows(db, "SELECT * FROM alerts WHERE key LIKE ? ORDER BY id", (key_like,))


def outbox_rows(db: Any) -> list[dict[str, Any]]:
    return store_rows(db, "SELECT id, msg_id, channel, event, state, alert_id FROM outbox")
