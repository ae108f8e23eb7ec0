"""The gateway as the tests and the soak bench drive it: a config writer, ``firegrid run`` as a real subprocess, a
QoS 1 load publisher, and deadline polling (no fixed sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

from testkit.services import ManagedProcess, free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for(
    predicate: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    error: type[Exception] = AssertionError,
) -> Any:
    """Poll ``predicate`` until it returns something truthy, and return that; ``error`` naming ``what`` once
    ``timeout`` seconds have passed (the predicate is asked once more at the deadline, so a slow poll never fails a
    condition that holds)."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise error(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def write_config(
    tmp_path: Path,
    *,
    mqtt_url: str,
    influx_url: str | None,
    devices: int = 200,
    buildings: int = 10,
    http_port: int | None = None,
    client_id: str = "gw-test",
    extra: dict[str, Any] | None = None,
) -> tuple[Path, int]:
    port = http_port or free_port()
    config: dict[str, Any] = {
        "mqtt": {"url": mqtt_url, "client_id": client_id, "session_expiry_s": 3600, "max_inflight": 1000},
        "influx": {
            "url": influx_url,
            "batch_size": 2000,
            "flush_interval_s": 0.2,
            "spool_dir": str(tmp_path / "spool"),
            "timeout_s": 2,
        },
        "store": {"path": str(tmp_path / "firegrid.sqlite")},
        "http": {"listen": f"127.0.0.1:{port}", "tokens": [{"name": "t", "token": "test-admin", "role": "admin"}]},
        "log": {"level": "info", "format": "json"},
        "buildings": [
            {"id": f"b{b:02d}", "name": f"Building {b}", "grid": f"g{b % 3}", "floors": 20} for b in range(buildings)
        ],
        "devices": [
            {"id": f"d{d:03d}", "building": f"b{d % buildings:02d}", "kind": "smoke", "floor": 1 + d % 20}
            for d in range(devices)
        ],
    }
    for section, values in (extra or {}).items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section].update(values)
        else:
            config[section] = values
    path = tmp_path / "firegrid.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    return path, port


def store_rows(db: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Rows straight from the gateway's store, as dicts: its SQLite file (read-only, so a test looking cannot take
    a lock the gateway is waiting for or change what it checks), or a PostgreSQL URL (``?`` placeholders either
    way, read in a read-only transaction)."""
    if isinstance(db, str) and db.startswith(("postgresql://", "postgres://")):
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(db, row_factory=dict_row) as pg:
            pg.read_only = True
            return list(pg.execute(sql.replace("?", "%s"), params))  # type: ignore[arg-type]
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


class Gateway(ManagedProcess):
    """``python -m gateway.tools.cli run --config FILE`` as a real process (so it can be SIGKILLed)."""

    def __init__(self, config_path: Path, http_port: int, log_path: Path) -> None:
        super().__init__(workdir=config_path.parent)
        self.config_path = config_path
        self.http_port = http_port
        self.log_path = log_path

    def start(self, *, ready_timeout: float = 20.0) -> Gateway:
        argv = [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(self.config_path)]
        self._spawn(argv, self.log_path, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        wait_for(self._mqtt_ready, timeout=ready_timeout, what="the gateway to connect to MQTT")
        return self

    def _mqtt_ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log_tail()}")
        status, body = self.get("/readyz")
        if status is None:
            return False
        checks = json.loads(body)["checks"]
        # cluster mode: the member runs and every partition session it owns is connected
        return bool(checks["cluster"]["ok"] if "cluster" in checks else checks["mqtt"]["ok"])

    def get(self, path: str, *, token: str | None = None) -> tuple[int | None, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (urllib.error.URLError, OSError):
            return None, ""

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 if absent)."""
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            match = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def stop(self, *, timeout: float = 30.0) -> int | None:
        return super().stop(timeout=timeout)  # a gateway finishes its InfluxDB batch and closes the store first

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Publisher:
    """A QoS 1 publisher with a persistent session: on a broker restart paho reconnects and resends what was not
    acknowledged.  Outstanding publishes are bounded (paho refuses more than 65,535)."""

    def __init__(self, port: int, *, client_id: str = "test-pub", max_outstanding: int = 2000) -> None:
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
        )
        self.client.max_inflight_messages_set(1000)
        self.client.reconnect_delay_set(0.05, 0.5)
        self._acked = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.max_outstanding = max_outstanding
        self.sent = 0
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, *_args: Any) -> None:
        with self._cond:
            self._acked += 1
            self._cond.notify_all()

    @property
    def acked(self) -> int:
        return self._acked

    def publish(self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self.sent - self._acked < self.max_outstanding, timeout=60)
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise AssertionError(f"publish failed: {info.rc}")
        self.sent += 1

    def wait_acked(self, *, timeout: float = 60) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._acked >= self.sent, timeout=timeout):
                raise AssertionError(f"broker acknowledged {self._acked} of {self.sent} publishes")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def readings(devices: int = 200, per_device: int = 50, *, base_ms: int | None = None) -> list[tuple[str, bytes]]:
    """``devices * per_device`` distinct smoke readings, interleaved across devices, each with its own seq."""
    base = base_ms or int(time.time() * 1000) - per_device * 1000 - 60_000
    out = []
    for i in range(per_device):
        for d in range(devices):
            topic = f"firegrid/b{d % 10:02d}/d{d:03d}/telemetry"
            payload = {"ts": base + i * 1000, "seq": i, "obscuration": round(0.1 + (i % 7) * 0.05, 2), "battery": 90}
            out.append((topic, json.dumps(payload).encode()))
    return out


def publish_all(
    publisher: Publisher, items: list[tuple[str, bytes]], *, on_progress: Callable[[int], None] | None = None
) -> None:
    for index, (topic, payload) in enumerate(items):
        publisher.publish(topic, payload)
        if on_progress is not None:
            on_progress(index + 1)


def retained(port: int, topic: str, *, timeout: float = 5.0) -> bytes | None:
    """The retained message on ``topic`` (None if there is none)."""
    got: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}")
    client.on_message = lambda _c, _u, message: got.append(message.payload)
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)
        subscribed.wait(timeout)
        # a retained message is sent right after SUBACK; give it the same round trip
        deadline = time.monotonic() + 0.5
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        return got[0] if got else None
    finally:
        client.loop_stop()
        client.disconnect()
