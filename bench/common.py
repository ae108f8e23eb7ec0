"""Shared machinery for every benchmark in ``bench/``.

Each bench script is a module with ``main(argv) -> int`` that accepts ``--quick`` (a smoke run of a few seconds) and
``--json``, and reports through :func:`emit`.  With ``--json`` the last line of stdout is one JSON object::

    {"bench": "ingest", "quick": false,
     "figures": [{"name": "ingest.readings_per_s", "label": "Ingest, whole pipeline", "value": 9100.0,
                  "unit": "readings/s", "baseline": 18000.0, "baseline_label": "bare paho QoS 1 subscriber",
                  "ratio": 0.51, "goal": ">= 0.5x bare paho", "goal_on": "ratio", "goal_min": 0.5, "goal_max": null}],
     "notes": ["..."], "conditions": {"rate": 1000}}

``bench/run.py`` runs each script three times, takes the median of every figure (with min–max) and writes them into
docs/performance.md.  Build figures with :class:`Figure` so the names stay stable across runs.

Also here: real Mosquitto + InfluxDB set up for a bench (:func:`services`), a paced paho-mqtt QoS 1 publisher with a
bound on unacknowledged messages (:class:`Publisher`), the first arrival of each alarm's webhook
(:func:`first_arrival_by_key`; the receiver is :class:`testkit.webhooks.ThreadedReceiver`), percentiles, RSS
sampling from /proc, and ``firegrid run`` as a subprocess (:class:`FiregridProcess`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))

from testkit.gateway import wait_for  # noqa: E402
from testkit.services import InfluxServer, ManagedProcess, MosquittoServer, free_port  # noqa: E402
from testkit.webhooks import Arrival, ThreadedReceiver  # noqa: E402

__all__ = [
    "ROOT",
    "BenchError",
    "Figure",
    "FiregridProcess",
    "Publisher",
    "RawPublisher",
    "RssSampler",
    "bench_parser",
    "emit",
    "free_port",
    "machine_info",
    "percentile",
    "ratio_line",
    "rss_mb",
    "services",
    "summarize_ms",
    "wait_until",
]


class BenchError(RuntimeError):
    """A benchmark could not run (a server did not start, the system under test is missing)."""


# --------------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Figure:
    """One measured number, optionally with the baseline it is compared to in the same run and a goal."""

    name: str  # stable key, "<bench>.<what>", e.g. "latency.p99_ms@10000"
    value: float
    unit: str
    label: str = ""
    better: Literal["higher", "lower"] = "higher"
    baseline: float | None = None
    baseline_label: str | None = None
    goal: str | None = None  # human text: ">= 0.5x bare paho", "< 100 ms"
    goal_on: Literal["value", "ratio", "baseline"] = "value"
    goal_min: float | None = None
    goal_max: float | None = None

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out


def goal_met(
    *,
    value: float,
    ratio: float | None,
    goal_on: str,
    goal_min: float | None,
    goal_max: float | None,
    baseline: float | None = None,
    better: str = "higher",
) -> bool | None:
    """True/False when a figure has a goal, None when it has none (or what it compares is unknown).

    ``goal_on`` "value"/"ratio": the value (or value/baseline) within goal_min..goal_max; "baseline": the baseline
    is at least as good as the value (used for "firegrid ahead of the peer": the peer's value, firegrid's baseline).
    """
    if goal_on == "baseline":
        if baseline is None or math.isnan(value) or math.isnan(baseline):
            return None
        return baseline <= value if better == "lower" else baseline >= value
    if goal_min is None and goal_max is None:
        return None
    subject = ratio if goal_on == "ratio" else value
    if subject is None or (isinstance(subject, float) and math.isnan(subject)):
        return None
    if goal_min is not None and subject < goal_min:
        return False
    return not (goal_max is not None and subject > goal_max)


def bench_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (numbers are indicative)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object on the last line")
    return parser


def emit(
    bench: str,
    figures: Sequence[Figure],
    *,
    as_json: bool,
    quick: bool,
    notes: Sequence[str] = (),
    conditions: dict[str, Any] | None = None,
) -> None:
    """Report a bench's result: a readable table, or (``--json``) one JSON line last on stdout for bench/run.py."""
    if as_json:
        result = {
            "bench": bench,
            "quick": quick,
            "figures": [f.to_json() for f in figures],
            "notes": list(notes),
            "conditions": conditions or {},
        }
        sys.stdout.flush()
        print(json.dumps(result, separators=(",", ":")), flush=True)
        return
    print(f"== {bench}{' (quick)' if quick else ''}")
    for f in figures:
        line = f"  {f.label or f.name:<52} {fmt_number(f.value):>12} {f.unit}"
        if f.ratio is not None and not math.isnan(f.ratio):
            line += f"   ({ratio_line(f.value, f.baseline or 0, f.baseline_label or 'baseline')})"
        if f.goal:
            met = goal_met(
                value=f.value,
                ratio=f.ratio,
                goal_on=f.goal_on,
                goal_min=f.goal_min,
                goal_max=f.goal_max,
                baseline=f.baseline,
                better=f.better,
            )
            line += f"   goal {f.goal}: {'met' if met else 'NOT met' if met is False else '-'}"
        print(line)
    for note in notes:
        print(f"  note: {note}")


def fmt_number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio_line(value: float, baseline: float, baseline_label: str) -> str:
    """``0.52x of bare paho (9,100 vs 17,500)``."""
    if not baseline:
        return f"no {baseline_label} figure"
    return f"{value / baseline:.2f}x of {baseline_label} ({fmt_number(value)} vs {fmt_number(baseline)})"


# --------------------------------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values.  Nearest rank never invents a value nobody saw."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if p <= 0:
        return ordered[0]
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[min(len(ordered), max(rank, 1)) - 1]


def summarize_ms(latencies_ms: Sequence[float]) -> dict[str, float]:
    return {
        "n": float(len(latencies_ms)),
        "p50": percentile(latencies_ms, 50),
        "p99": percentile(latencies_ms, 99),
        "max": max(latencies_ms) if latencies_ms else math.nan,
    }


def median(values: Sequence[float]) -> float:
    clean = sorted(v for v in values if not (isinstance(v, float) and math.isnan(v)))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it holds; BenchError (a failed run, not a failed test) after ``timeout`` seconds."""
    wait_for(predicate, timeout=timeout, what=what, interval=interval, error=BenchError)


# --------------------------------------------------------------------------------------------------------------------
# Machine and memory


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024 / 1024
                break
    return {"nproc": os.cpu_count() or 0, "cpu": cpu, "ram_gib": round(mem_gib, 1), "python": sys.version.split()[0]}


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MiB (VmRSS from /proc); NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return math.nan


class RssSampler:
    """Samples a process's RSS in a background thread; ``peak`` and ``last`` in MiB."""

    def __init__(self, pid: int, *, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if not math.isnan(value):
                self.samples.append(value)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    @property
    def peak(self) -> float:
        return max(self.samples) if self.samples else math.nan

    @property
    def last(self) -> float:
        return self.samples[-1] if self.samples else math.nan


# --------------------------------------------------------------------------------------------------------------------
# Servers


@dataclass
class Services:
    broker: MosquittoServer
    influx: InfluxServer
    workdir: Path


@contextlib.contextmanager
def services(
    workdir: Path | None = None, *, influx: bool = True, broker_persistence: bool = False
) -> Iterator[Services]:
    """A private Mosquitto (queues and in-flight raised so that a backlog queues instead of being dropped) and
    InfluxDB for one bench run.

    Broker persistence is off by default: a bench measures the gateway, and an autosave of a million queued messages
    every second would measure the broker's disk instead.  Persistent sessions still queue in memory.
    """
    own = workdir is None
    base = Path(tempfile.mkdtemp(prefix="firegrid-bench-")) if workdir is None else workdir
    broker = MosquittoServer(
        workdir=base / "mosquitto",
        persistence=broker_persistence,
        max_queued_messages=10_000_000,
        max_inflight_messages=1000,
        extra_config=("max_queued_bytes 0", "message_size_limit 262144"),
    )
    db = InfluxServer(workdir=base / "influx")
    started: list[Any] = []
    try:
        broker.start()
        started.append(broker)
        if influx:
            db.start()
            started.append(db)
        yield Services(broker=broker, influx=db, workdir=base)
    finally:
        for server in reversed(started):
            with contextlib.suppress(Exception):
                server.stop(timeout=10)
        if own:
            shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------------------
# Load: a paced paho-mqtt QoS 1 publisher


@dataclass
class PublishStats:
    sent: int = 0
    acked: int = 0
    elapsed_s: float = 0.0
    stalled_s: float = 0.0  # time spent waiting for the broker to acknowledge (the window was full)

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else math.nan


class Publisher:
    """A paho-mqtt client that publishes QoS 1 with at most ``max_outstanding`` unacknowledged messages.

    The bound matters: paho refuses more than 65,535 unacknowledged publishes (ERR_QUEUE_SIZE) and a load generator
    that outruns the broker must slow down, not drop.  ``publish`` records ``time.monotonic_ns()`` of
    each call for latency measurements (:attr:`sent_at`, keyed by caller-chosen ``mark``).
    """

    def __init__(
        self,
        *,
        port: int,
        host: str = "127.0.0.1",
        client_id: str | None = None,
        qos: int = 1,
        max_outstanding: int = 1000,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.qos = qos
        self._window = threading.BoundedSemaphore(max_outstanding)
        self._max_outstanding = max_outstanding
        self._lock = threading.Lock()
        self.stats = PublishStats()
        self.sent_at: dict[str, int] = {}
        self._connected = threading.Event()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"bench-pub-{os.getpid()}-{id(self):x}",
            protocol=mqtt.MQTTv311,
        )
        # Our semaphore bounds what is outstanding, so paho's own in-flight limit is switched off (0): with a limit,
        # paho walks every outstanding message on each PUBACK (O(window) per ack; 3.4k msg/s at a window of 2,000
        # against 8.9k at 100, measured).
        self._client.max_inflight_messages_set(0)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_publish = self._on_publish
        self._host, self._port = host, port

    def _on_publish(self, _client: Any, _userdata: Any, _mid: int, _rc: Any, _props: Any) -> None:
        if self.qos > 0:
            self.stats.acked += 1
            self._window.release()

    def __enter__(self) -> Publisher:
        self._client.connect(self._host, self._port, keepalive=60)
        self._client.loop_start()
        if not self._connected.wait(10):
            raise BenchError(f"publisher could not connect to 127.0.0.1:{self._port}")
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes | str, *, mark: str | None = None) -> None:
        if self.qos > 0 and not self._window.acquire(blocking=False):
            waited = time.perf_counter()
            self._window.acquire()
            self.stats.stalled_s += time.perf_counter() - waited
        if mark is not None:
            self.sent_at[mark] = time.monotonic_ns()
        info = self._client.publish(topic, payload, qos=self.qos)
        if info.rc != 0:
            raise BenchError(f"paho publish failed with rc={info.rc}")
        self.stats.sent += 1

    def run_paced(
        self,
        messages: Iterable[tuple[str, bytes]],
        *,
        rate: float | None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> PublishStats:
        """Publish at ``rate`` messages/s (None: as fast as the window allows) until the iterable, the duration or
        ``stop`` ends.  Returns the stats of this call only; a publisher that falls behind does not catch up in a
        burst larger than 1 s worth."""
        start = time.perf_counter()
        sent = 0
        interval = 1.0 / rate if rate else 0.0
        next_at = start
        for topic, payload in messages:
            if stop is not None and stop.is_set():
                break
            now = time.perf_counter()
            if duration_s is not None and now - start >= duration_s:
                break
            if interval:
                if now < next_at - 0.001:
                    time.sleep(next_at - now)
                elif now > next_at + 1.0:
                    next_at = now  # fell behind by more than a second: do not burst to catch up
                next_at += interval
            self.publish(topic, payload)
            sent += 1
        elapsed = time.perf_counter() - start
        return PublishStats(sent=sent, acked=0, elapsed_s=elapsed)

    def wait_acked(self, *, timeout: float = 60.0) -> None:
        """Block until the broker acknowledged everything published so far."""
        if self.qos == 0:
            return
        wait_until(lambda: self.stats.acked >= self.stats.sent, timeout=timeout, interval=0.01, what="PUBACKs")


class RawPublisher:
    """A minimal MQTT 3.1.1 QoS 1 publisher on a plain socket, for background load.

    Same interface as :class:`Publisher`, at a fraction of its CPU: packets are encoded by hand and written in batches,
    and a reader thread only counts PUBACKs.  On 2 cores every microsecond the load generator spends is taken from the
    system under test, and paho costs ~70 µs per QoS 1 publish (it tops out near 10k msg/s here).  At most
    ``max_outstanding`` publishes are unacknowledged (and never more than 65,535: packet ids wrap).
    """

    def __init__(
        self, *, port: int, host: str = "127.0.0.1", client_id: str | None = None, max_outstanding: int = 1000
    ) -> None:
        import socket

        self._address = (host, port)
        self._client_id = (client_id or f"bench-raw-{os.getpid()}-{id(self):x}").encode()
        self._max = min(max_outstanding, 65_000)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._acked_cv = threading.Condition()
        self._pid = 0
        self._reader: threading.Thread | None = None
        self._closed = False
        self.qos = 1
        self.stats = PublishStats()
        self.sent_at: dict[str, int] = {}

    @staticmethod
    def _varint(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n % 128, n // 128
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def _packet(self, topic: bytes, payload: bytes) -> bytes:
        self._pid = self._pid % 65_535 + 1
        body = len(topic).to_bytes(2, "big") + topic + self._pid.to_bytes(2, "big") + payload
        return b"\x32" + self._varint(len(body)) + body

    def __enter__(self) -> RawPublisher:
        self._sock.settimeout(10)
        self._sock.connect(self._address)
        variable = b"\x00\x04MQTT\x04\x02\x00\x00"  # MQTT 3.1.1, clean session, keepalive 0 (off)
        body = variable + len(self._client_id).to_bytes(2, "big") + self._client_id
        self._sock.sendall(b"\x10" + self._varint(len(body)) + body)
        connack = b""
        while len(connack) < 4:
            chunk = self._sock.recv(4 - len(connack))
            if not chunk:
                raise BenchError("broker closed the connection before CONNACK")
            connack += chunk
        if connack[0] != 0x20 or connack[3] != 0:
            raise BenchError(f"broker refused the load generator: CONNACK {connack.hex()}")
        self._sock.settimeout(None)
        self._reader = threading.Thread(target=self._read, name="raw-puback-reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        buf = b""
        while not self._closed:
            try:
                chunk = self._sock.recv(65_536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            acks = 0
            pos = 0
            while True:
                # Fixed header: type byte, then a 1-4 byte remaining length.
                if len(buf) - pos < 2:
                    break
                length, shift, i = 0, 0, pos + 1
                while i < len(buf):
                    byte = buf[i]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    i += 1
                    if not byte & 0x80:
                        break
                else:
                    break
                if len(buf) - i < length:
                    break
                if buf[pos] >> 4 == 4:  # PUBACK
                    acks += 1
                pos = i + length
            buf = buf[pos:]
            if acks:
                with self._acked_cv:
                    self.stats.acked += acks
                    self._acked_cv.notify_all()

    def _send(self, packets: list[bytes]) -> None:
        self._sock.sendall(b"".join(packets))
        self.stats.sent += len(packets)
        packets.clear()

    def _wait_window(self, extra: int) -> None:
        if self.stats.sent + extra - self.stats.acked <= self._max:
            return
        waited = time.perf_counter()
        with self._acked_cv:
            while self.stats.sent + extra - self.stats.acked > self._max:
                self._acked_cv.wait(0.05)
        self.stats.stalled_s += time.perf_counter() - waited

    def publish(self, topic: str, payload: bytes | str, *, mark: str | None = None) -> None:
        self._wait_window(1)
        data = payload.encode() if isinstance(payload, str) else payload
        packet = self._packet(topic.encode(), data)
        if mark is not None:
            self.sent_at[mark] = time.monotonic_ns()
        self._send([packet])

    def run_paced(
        self,
        messages: Iterable[tuple[str, bytes]],
        *,
        rate: float | None,
        duration_s: float | None = None,
        stop: threading.Event | None = None,
    ) -> PublishStats:
        """As :meth:`Publisher.run_paced`; packets due at the same millisecond go out in one write."""
        start = time.perf_counter()
        sent_before = self.stats.sent
        interval = 1.0 / rate if rate else 0.0
        next_at = start
        pending: list[bytes] = []
        for topic, payload in messages:
            if stop is not None and stop.is_set():
                break
            now = time.perf_counter()
            if duration_s is not None and now - start >= duration_s:
                break
            if interval:
                if now < next_at - 0.001:
                    if pending:
                        self._send(pending)
                    time.sleep(next_at - now)
                elif now > next_at + 1.0:
                    next_at = now  # fell behind by more than a second: do not burst to catch up
                next_at += interval
            if self.stats.sent + len(pending) + 1 - self.stats.acked > self._max:
                if pending:
                    self._send(pending)
                self._wait_window(1)
            pending.append(self._packet(topic.encode(), payload))
            if len(pending) >= 64:
                self._send(pending)
        if pending:
            self._send(pending)
        return PublishStats(sent=self.stats.sent - sent_before, elapsed_s=time.perf_counter() - start)

    def wait_acked(self, *, timeout: float = 60.0) -> None:
        wait_until(lambda: self.stats.acked >= self.stats.sent, timeout=timeout, interval=0.01, what="PUBACKs")

    def __exit__(self, *_exc: object) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._sock.sendall(b"\xe0\x00")  # DISCONNECT
        with contextlib.suppress(OSError):
            self._sock.close()
        if self._reader is not None:
            self._reader.join(timeout=2)


def paced_in_thread(
    publisher: Publisher | RawPublisher,
    messages: Iterable[tuple[str, bytes]],
    *,
    rate: float | None,
    duration_s: float | None = None,
) -> tuple[threading.Thread, threading.Event, list[PublishStats]]:
    """Run :meth:`Publisher.run_paced` in a thread; returns (thread, stop event, [stats once done])."""
    stop = threading.Event()
    out: list[PublishStats] = []

    def work() -> None:
        out.append(publisher.run_paced(messages, rate=rate, duration_s=duration_s, stop=stop))

    thread = threading.Thread(target=work, name="bench-load", daemon=True)
    thread.start()
    return thread, stop, out


# --------------------------------------------------------------------------------------------------------------------
# Webhook arrivals (the receiver is testkit.webhooks.ThreadedReceiver)


def first_arrival_by_key(arrivals: Iterable[Arrival], keys: Iterable[str]) -> dict[str, int]:
    """For each key (e.g. a device id that occurs in exactly one alarm), the arrival time of the first valid
    webhook whose body mentions it.  Matching on the body, not on a field path, keeps the bench independent of the
    exact payload layout of each system under test."""
    wanted = {k: f'"{k}"'.encode() for k in keys}
    found: dict[str, int] = {}
    for arrival in sorted(arrivals, key=lambda a: a.at_ns):
        for key, needle in wanted.items():
            if key not in found and needle in arrival.body:
                found[key] = arrival.at_ns
    return found


# --------------------------------------------------------------------------------------------------------------------
# firegrid run as a subprocess


@dataclass
class FiregridProcess(ManagedProcess):
    """``firegrid run --config FILE`` in its own process group; ready when ``/readyz`` answers 200."""

    config: dict[str, Any]
    env: dict[str, str] = field(default_factory=dict)
    started_at: float = field(default=0.0, init=False)
    ready_after_s: float = field(default=math.nan, init=False)

    @property
    def http_base(self) -> str:
        return f"http://{self.config['http']['listen']}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "firegrid.yaml"

    @property
    def log_path(self) -> Path:
        return self.workdir / "firegrid.log"

    def start(self, *, timeout: float = 120.0) -> FiregridProcess:
        import yaml

        self.workdir.mkdir(parents=True, exist_ok=True)
        dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # the pure-Python dumper takes ~20 s for 100k devices
        self.config_path.write_text(yaml.dump(self.config, Dumper=dumper, sort_keys=False))
        argv = [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(self.config_path)]
        exe = Path(sys.executable).parent / "firegrid"
        if exe.exists():
            argv = [str(exe), "run", "--config", str(self.config_path)]
        self.started_at = time.monotonic()
        self._spawn(argv, self.log_path, cwd=self.workdir, env={**os.environ, **self.env})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"firegrid run exited with {self.proc.returncode}:\n{self.log_tail()}")
            if self.http_status("/readyz") == 200:
                self.ready_after_s = time.monotonic() - self.started_at
                return self
            time.sleep(0.05)
        raise BenchError(f"firegrid run not ready within {timeout:.0f}s:\n{self.log_tail()}")

    def http_status(self, path: str, *, token: str | None = None) -> int:
        request = urllib.request.Request(self.http_base + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                response.read()
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, *, timeout: float = 20.0) -> int | None:
        return super().stop(timeout=timeout)  # a gateway under load takes longer than a test server to finish its batch

    def __enter__(self) -> FiregridProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def firegrid_config(
    *,
    broker_port: int,
    influx_url: str | None,
    workdir: Path,
    buildings: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    webhook: ThreadedReceiver | None = None,
    http_port: int | None = None,
    client_id: str = "firegrid-bench",
    tokens: list[dict[str, Any]] | None = None,
    mqtt_protocol: str | None = None,
) -> dict[str, Any]:
    """A ``firegrid run`` config (keys of gateway/config.py) for a bench: private broker, InfluxDB, store and port."""
    config: dict[str, Any] = {
        "mqtt": {"url": f"mqtt://127.0.0.1:{broker_port}", "client_id": client_id, "max_inflight": 1000},
        "influx": {"url": influx_url, "database": "firegrid", "spool_dir": str(workdir / "spool")},
        "store": {"path": str(workdir / "firegrid.sqlite")},
        "http": {"listen": f"127.0.0.1:{http_port or free_port()}", "tokens": tokens or []},
        "log": {"level": "warning", "format": "json"},
        "buildings": buildings,
        "devices": devices,
    }
    if mqtt_protocol is not None:
        config["mqtt"]["protocol"] = mqtt_protocol
    if influx_url is None:
        del config["influx"]["url"]
    if webhook is not None:
        config["notify"] = {
            "webhooks": [
                {
                    "name": "bench",
                    "url": webhook.url,
                    "secret": webhook.secret,
                    "events": ["alert.raised"],
                    "min_severity": "fire",
                    "allow_private": True,
                    "timeout_s": 10,
                }
            ]
        }
    return config


# --------------------------------------------------------------------------------------------------------------------
# A synthetic community for load: background smoke detectors and one-shot alarm detectors


@dataclass(frozen=True)
class Community:
    """``n_devices`` smoke detectors reporting normal telemetry in ``n_buildings`` buildings, plus ``n_alarms``
    alarm detectors, each alone in its own building, each of which alarms exactly once in a run (so every alarm is a
    fresh alert, and its device id identifies its webhook)."""

    n_devices: int = 1000
    n_buildings: int = 50
    n_alarms: int = 100
    prefix: str = "firegrid"
    grid: str = "g01"

    def buildings(self) -> list[dict[str, Any]]:
        out = [
            {"id": f"b{i:04d}", "name": f"Building {i}", "grid": self.grid, "floors": 20}
            for i in range(self.n_buildings)
        ]
        out += [
            {"id": f"x{i:04d}", "name": f"Alarm building {i}", "grid": self.grid, "floors": 5}
            for i in range(self.n_alarms)
        ]
        return out

    def devices(self) -> list[dict[str, Any]]:
        out = [
            {"id": self.device(i), "building": self.building_of(i), "kind": "smoke", "floor": 1 + i % 20}
            for i in range(self.n_devices)
        ]
        out += [
            {"id": self.alarm_device(i), "building": f"x{i:04d}", "kind": "smoke", "floor": 1}
            for i in range(self.n_alarms)
        ]
        return out

    def device(self, i: int) -> str:
        return f"sd{i:06d}"

    def building_of(self, i: int) -> str:
        return f"b{i % self.n_buildings:04d}"

    def alarm_device(self, i: int) -> str:
        return f"alarm{i:05d}"

    def telemetry(self, *, seq_start: int = 0, limit: int | None = None) -> Iterator[tuple[str, bytes]]:
        """Normal readings round-robin over the background devices, each with a fresh ``seq`` (never a replay)."""
        n = 0
        seq = seq_start
        topics = [f"{self.prefix}/{self.building_of(i)}/{self.device(i)}/telemetry" for i in range(self.n_devices)]
        while limit is None or n < limit:
            for topic in topics:
                if limit is not None and n >= limit:
                    return
                ts = int(time.time() * 1000)
                payload = b'{"ts":%d,"seq":%d,"obscuration":0.12,"battery":87,"rssi":-71}' % (ts, seq)
                yield topic, payload
                n += 1
            seq += 1

    def alarm_event(self, i: int) -> tuple[str, bytes]:
        """Detector ``alarm{i}`` entering alarm, told on its ``event`` channel (the gateway's fast lane)."""
        topic = f"{self.prefix}/x{i:04d}/{self.alarm_device(i)}/event"
        ts = int(time.time() * 1000)
        return topic, b'{"ts":%d,"type":"alarm","device":"%s"}' % (ts, self.alarm_device(i).encode())

    def alarm(self, i: int) -> tuple[str, bytes]:
        """Detector ``alarm{i}`` in alarm: its own alarm decision and obscuration far above any threshold."""
        topic = f"{self.prefix}/x{i:04d}/{self.alarm_device(i)}/telemetry"
        ts = int(time.time() * 1000)
        payload = b'{"ts":%d,"seq":1,"device":"%s","obscuration":12.5,"alarm":true,"battery":90}' % (
            ts,
            self.alarm_device(i).encode(),
        )
        return topic, payload


def json_dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
