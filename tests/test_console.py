"""``firegrid console``: one gateway (``firegrid run``) and two consoles, all real processes over one SQLite store.

Each console lists every building and open alert, hears the gateway's alarms on its live stream through the store's
change log, acts on incidents through the store (the gateway's escalation stops), answers 409 for what needs a
gateway's memory, and stops cleanly on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from testkit.gateway import ROOT, Gateway, Publisher, store_rows, wait_for, write_config
from testkit.services import ManagedProcess, MosquittoServer, free_port

TOKEN = "test-admin"
ACK_TIMEOUT_S = 6


class Console(ManagedProcess):
    """``firegrid console`` as a real process."""

    def __init__(self, config_path: Path, name: str) -> None:
        super().__init__(workdir=config_path.parent)
        self.config_path = config_path
        self.port = free_port()
        self.log_path = config_path.parent / f"{name}.log"

    def start(self) -> Console:
        argv = [sys.executable, "-m", "gateway.tools.cli", "console", "--config", str(self.config_path)]
        argv += ["--listen", f"127.0.0.1:{self.port}"]
        self._spawn(argv, self.log_path, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_for(self._ready, timeout=20, what="the console to answer /readyz")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"console exited with {self.proc.returncode}:\n{self.log_tail()}")
        status, _ = self.call("GET", "/readyz")
        return status == 200

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int | None, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        request.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")
        except (urllib.error.URLError, OSError):
            return None, None

    def items(self, path: str) -> list[dict[str, Any]]:
        status, document = self.call("GET", path)
        assert status == 200, document
        return document["items"] if isinstance(document, dict) else document  # type: ignore[no-any-return]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Stream:
    """``GET /api/v1/stream`` read by a thread; ``expect`` waits for an event (no sleeps)."""

    def __init__(self, port: int) -> None:
        self.events: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self.seen: list[tuple[str, dict[str, Any]]] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.conn.request("GET", "/api/v1/stream", headers={"Authorization": f"Bearer {TOKEN}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.expect(lambda kind, _data: kind == "hello", what="hello")

    def _read(self) -> None:
        kind, data = "message", ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                elif not line:
                    if data:
                        self.events.put((kind, json.loads(data)))
                    kind, data = "message", ""
        except (OSError, ValueError, AttributeError, http.client.HTTPException):  # AttributeError: closed by us
            pass
        self.events.put(None)  # the stream ended

    def expect(self, match: Callable[[str, dict[str, Any]], bool], *, what: str, timeout: float = 20) -> dict[str, Any]:
        for kind, data in self.seen:
            if match(kind, data):
                return data
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} on the stream in {timeout:g}s; saw {[k for k, _ in self.seen]}")
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                raise AssertionError(f"the stream ended before {what}")
            self.seen.append(item)
            if match(*item):
                return item[1]

    def ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.events.get(timeout=max(0.01, deadline - time.monotonic())) is None:
                    return True
            except queue.Empty:
                return False
        return False

    def close(self) -> None:
        self.conn.close()


def _alert_change(change: str, device: str) -> Callable[[str, dict[str, Any]], bool]:
    def match(kind: str, data: dict[str, Any]) -> bool:
        alert = data.get("alert") or {}
        return kind == "alert" and data.get("change") == change and alert.get("device") == device

    return match


def _alarm(publisher: Publisher, building: str, device: str) -> None:
    reading = {"ts": int(time.time() * 1000), "obscuration": 0.5, "alarm": True}
    publisher.publish(f"firegrid/{building}/{device}/telemetry", json.dumps(reading))


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str | None:
    """The shared store: the SQLite file (None), or a PostgreSQL database's URL (cluster mode's store)."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def config_path(tmp_path: Path, mosquitto: MosquittoServer, backend: str | None) -> tuple[Path, int]:
    return write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        devices=8,
        buildings=4,
        extra={
            **({"store": {"url": backend}} if backend else {}),
            "notify": {
                "ack_timeout_s": ACK_TIMEOUT_S,
                "roster": [
                    {"name": "grid worker", "phone": "+8613800000001", "role": "grid_worker"},
                    {"name": "station leader", "phone": "+8613800000002", "role": "station_leader"},
                ],
                "routes": [{"name": "fire", "tiers": [{"roles": ["grid_worker"]}, {"roles": ["station_leader"]}]}],
            },
        },
    )


def test_two_consoles_follow_a_gateway_through_the_store(
    tmp_path: Path, mosquitto: MosquittoServer, config_path: tuple[Path, int], backend: str | None
) -> None:
    path, http_port = config_path
    store = backend or tmp_path / "firegrid.sqlite"
    gateway = Gateway(path, http_port, tmp_path / "gateway.log").start()
    a = Console(path, "console-a").start()
    b = Console(path, "console-b").start()
    publisher = Publisher(mosquitto.port)
    streams: list[Stream] = []
    try:
        # every building of the config, from both; the gateway's dashboard and tokens
        for console in (a, b):
            assert {x["id"] for x in console.items("/api/v1/buildings")} == {"b00", "b01", "b02", "b03"}
            with urllib.request.urlopen(f"http://127.0.0.1:{console.port}/", timeout=10) as page:
                assert page.status == 200 and b"<html" in page.read().lower()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{console.port}/api/v1/alerts", timeout=10)
                raise AssertionError("no token, yet answered")
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        stream_a, stream_b = Stream(a.port), Stream(b.port)
        streams += [stream_a, stream_b]

        # an MQTT alarm the gateway raises reaches both consoles' live streams through the change log
        _alarm(publisher, "b00", "d000")
        raised = [s.expect(_alert_change("alert.raised", "d000"), what="d000's alarm") for s in streams]
        alert = raised[0]["alert"]
        assert raised[1]["alert"]["id"] == alert["id"] and alert["building"] == "b00"
        for console in (a, b):  # and both list it as open
            assert alert["id"] in {x["id"] for x in console.items("/api/v1/alerts?active=true")}

        # acknowledged through console A: in the store, on console B's stream, and the gateway's escalation stops
        status, body = a.call("POST", f"/api/v1/incidents/{alert['incident_id']}/ack", {"note": "on it"})
        assert status == 200, body
        [row] = store_rows(store, "SELECT state, escalate_at_ms, tier FROM alerts WHERE id = ?", (alert["id"],))
        assert row["state"] == "acknowledged" and row["escalate_at_ms"] is None
        stream_b.expect(_alert_change("alert.acknowledged", "d000"), what="the acknowledgement on console B")
        incident = stream_b.expect(
            lambda kind, data: kind == "incident" and data.get("change") == "incident.acknowledged",
            what="the incident acknowledged on console B",
        )
        assert incident["incident"]["id"] == alert["incident_id"]
        # the console's own action shows once on its own stream (from the change log, not also from its listener)
        stream_a.expect(_alert_change("alert.acknowledged", "d000"), what="the acknowledgement on console A")

        # a later alarm nobody acknowledges escalates: by then the first one's deadline has passed too
        _alarm(publisher, "b01", "d001")
        stream_b.expect(
            _alert_change("alert.escalated", "d001"), what="the unacknowledged alarm escalating", timeout=30
        )
        audit = store_rows(store, "SELECT action FROM audit WHERE alert_id = ?", (alert["id"],))
        assert "escalated" not in {r["action"] for r in audit}, audit
        assert not any(
            kind == "alert" and data.get("change") == "alert.escalated" and data["alert"]["id"] == alert["id"]
            for kind, data in stream_b.seen
        )

        # devices and presence come from the store's presence table, which the gateway flushes
        wait_for(
            lambda: any(d["id"] == "d000" and d["last_seen_ms"] for d in b.items("/api/v1/devices?building=b00")),
            timeout=15,
            what="d000's presence on console B",
        )

        # a hazard reported through console B is in the store, and console A lists it
        status, hazard = b.call(
            "POST", "/api/v1/hazards", {"building": "b02", "category": "blocked exit", "description": "bikes"}
        )
        assert status == 201, hazard
        assert store_rows(store, "SELECT building FROM hazards WHERE id = ?", (hazard["id"],)) == [{"building": "b02"}]
        assert hazard["id"] in {h["id"] for h in a.items("/api/v1/hazards?open=true")}

        # what needs a gateway's own memory says so
        for method, route, body in (
            ("GET", "/api/v1/maintenance", None),
            ("POST", "/api/v1/maintenance", {"building": "b00", "duration_s": 60}),
            ("GET", "/api/v1/rejections", None),
            ("POST", "/api/v1/ingest/b00/d000/telemetry", {"ts": 1, "obscuration": 0.1}),
        ):
            status, document = a.call(method, route, body)
            assert status == 409, (route, document)
            assert document["reason"].startswith("not available on the console: "), document

        # SIGTERM: the live stream ends, the process exits 0 and says so
        assert a.proc is not None
        a.proc.send_signal(signal.SIGTERM)
        assert a.proc.wait(timeout=15) == 0, a.log_tail()
        assert stream_a.ended(timeout=5)
        assert '"msg":"stopped"' in a.log_tail(5), a.log_tail(5)
        assert b.running and gateway.running
    finally:
        for s in streams:
            s.close()
        publisher.close()
        a.stop()
        b.stop()
        assert gateway.stop() == 0, gateway.log_tail()
