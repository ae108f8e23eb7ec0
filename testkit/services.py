"""Start, stop, kill and restart real Mosquitto and InfluxDB processes for tests and benchmarks.

No mocks: the gateway talks to the same server binaries a deployment uses (Debian's ``mosquitto`` and ``influxdb``).
Each server gets free loopback ports and a private temporary directory, so tests can restart or misconfigure them
without touching the machine's own broker on 1883.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


class ServiceError(RuntimeError):
    """A test server failed to start or stop; the message includes the tail of its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str, *candidates: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise ServiceError(f"{name} is not installed (make test installs it with apt-get)")


def _wait_until(predicate, *, timeout: float, what: str, log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceError(f"{what} exited with {proc.returncode}:\n{_tail(log)}")
        if predicate():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)
    raise ServiceError(f"{what} did not answer within {timeout}s:\n{_tail(log)}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
        return True
    return False


@dataclass
class ManagedProcess:
    """A server process in its own session (a signal to it reaches none of ours), its output appended to a log."""

    workdir: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _spawn(self, argv: list[str], log: Path, *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def stop(self, *, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGTERM): Mosquitto saves its persistence file, InfluxDB closes its shards, the gateway
        finishes its batch; SIGKILL after ``timeout`` seconds.  The exit status, None when nothing was running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no chance to save anything."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class MosquittoServer(ManagedProcess):
    """A private Mosquitto 2 broker.

    Defaults are the settings firegrid needs (docs/deploy.md): queues large enough that a slow subscriber loses no
    QoS 1 message, enough in-flight messages for acknowledgement after a group commit, and persistence.
    """

    port: int = field(default_factory=free_port)
    persistence: bool = True
    max_queued_messages: int = 1_000_000
    max_inflight_messages: int = 1000
    autosave_interval: int = 1
    extra_config: tuple[str, ...] = ()
    listeners: tuple[str, ...] = ()  # extra listener blocks, written verbatim
    allow_anonymous: bool = True

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            # As root, Mosquitto drops to user "mosquitto", which cannot write this private directory.
            *([f"user {pwd.getpwuid(os.geteuid()).pw_name}"] if os.geteuid() == 0 else []),
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.workdir}/",
            f"autosave_interval {self.autosave_interval}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            *self.extra_config,
            f"listener {self.port} 127.0.0.1",
            *self.listeners,
        ]
        self.config_path.write_text("\n".join(lines) + "\n")
        return self.config_path

    def start(self, *, timeout: float = 10.0) -> MosquittoServer:
        if self.running:
            return self
        self.write_config()
        binary = _binary("mosquitto", "/usr/sbin/mosquitto")
        self._spawn([binary, "-c", str(self.config_path)], self.log_path)
        assert self.proc is not None
        _wait_until(
            lambda: _port_open(self.port),
            timeout=timeout,
            what="mosquitto",
            log=self.log_path,
            proc=self.proc,
        )
        return self

    def restart(self, *, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def log(self) -> str:
        return _tail(self.log_path, 10_000)


@dataclass
class InfluxServer(ManagedProcess):
    """A private InfluxDB 1.x (Debian's ``influxd``), HTTP on a free loopback port, no auth."""

    port: int = field(default_factory=free_port)
    rpc_port: int = field(default_factory=free_port)
    database: str = "firegrid"
    extra_http: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "influxd.log"

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "influxdb.conf"
        path.write_text(
            f"""reporting-disabled = true
bind-address = "127.0.0.1:{self.rpc_port}"
[meta]
  dir = "{self.workdir}/meta"
  logging-enabled = false
[data]
  dir = "{self.workdir}/data"
  wal-dir = "{self.workdir}/wal"
  query-log-enabled = false
[retention]
  enabled = false
[monitor]
  store-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
{chr(10).join(self.extra_http)}
[logging]
  level = "warn"
[continuous_queries]
  enabled = false
[subscriber]
  enabled = false
"""
        )
        return path

    def _ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/ping", timeout=0.5) as response:
                return response.status == 204
        except (urllib.error.URLError, OSError):
            return False

    def start(self, *, timeout: float = 20.0, create_database: bool = True) -> InfluxServer:
        if self.running:
            return self
        config = self.write_config()
        binary = _binary("influxd", "/usr/bin/influxd")
        self._spawn([binary, "run", "-config", str(config)], self.log_path)
        assert self.proc is not None
        _wait_until(self._ping, timeout=timeout, what="influxd", log=self.log_path, proc=self.proc)
        if create_database:
            self.query(f'CREATE DATABASE "{self.database}"', method="POST")
        return self

    def restart(self, *, kill: bool = False) -> None:
        self.kill() if kill else self.stop()
        self.start()

    def query(self, q: str, *, method: str = "GET", database: str | None = None) -> dict:
        import json

        params = {"q": q, "epoch": "ms"}
        if database or method == "GET":
            params["db"] = database or self.database
        data = urllib.parse.urlencode(params)
        if method == "GET":
            request = urllib.request.Request(f"{self.url}/query?{data}")
        else:
            request = urllib.request.Request(f"{self.url}/query", data=data.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def count(self, measurement: str, field_name: str, *, where: str = "") -> int:
        """``SELECT count(field) FROM measurement``: how many points InfluxDB holds."""
        clause = f" WHERE {where}" if where else ""
        result = self.query(f'SELECT count("{field_name}") FROM "{measurement}"{clause}')
        series = result["results"][0].get("series")
        if not series:
            return 0
        return int(series[0]["values"][0][1])

    def rows(self, q: str) -> list[dict]:
        result = self.query(q)["results"][0]
        out: list[dict] = []
        for series in result.get("series", []):
            columns = series["columns"]
            out.extend(dict(zip(columns, values, strict=True)) for values in series["values"])
        return out


def stop_all(servers: Iterable[ManagedProcess]) -> None:
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop(timeout=5)
