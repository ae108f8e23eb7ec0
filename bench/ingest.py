"""Ingest benchmark: sustained readings/s through the whole firegrid pipeline versus a bare paho-mqtt QoS 1
subscriber that only counts, on the same broker, in the same run.  The ratio is the figure.

Method (so the publisher is never the bottleneck): both subscribers first register persistent sessions (QoS 1,
clean start off), then go away; N readings from 200 devices are queued in the broker by C ``mosquitto_pub``
processes; then each subscriber connects in turn and drains its backlog as fast as it can.

* bare paho: a paho-mqtt 2.x client (``loop_forever`` in a thread), automatic PUBACK, counts messages;
* firegrid: ``python -m gateway.tools.cli run --config ...`` as a real process: manual PUBACK after the group commit
  (spool fsync + SQLite), contract validation, dedup, presence, the default rule set, InfluxDB writes.  Timed from
  its MQTT connection to (a) the last PUBACK and (b) the last point counted in InfluxDB with InfluxQL.

    python -m bench.ingest            # 100,000 readings, 3 runs, median (min-max), writes docs/performance.md
    python -m bench.ingest --quick    # 20,000 readings, 1 run, prints only (what ``make test`` may smoke-run)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit.services import InfluxServer, MosquittoServer, free_port  # noqa: E402

DEVICES = 200
TIMEOUT_S = 300  # for bench/run.py: one run preloads the broker, then drains twice
BUILDINGS = 10
DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- ingest:begin -->"
END = "<!-- ingest:end -->"


def _config(
    workdir: Path, *, mqtt_url: str, influx_url: str, http_port: int, protocol: str = "v5", receive_max: int = 1000
) -> Path:
    config = {
        "mqtt": {
            "url": mqtt_url,
            "client_id": "bench-gateway",
            "session_expiry_s": 3600,
            "max_inflight": receive_max,
            "protocol": protocol,
        },
        "influx": {"url": influx_url, "batch_size": 5000, "flush_interval_s": 0.5, "spool_dir": str(workdir / "spool")},
        "store": {"path": str(workdir / "firegrid.sqlite")},
        "http": {"listen": f"127.0.0.1:{http_port}"},
        "log": {"level": "warning"},
        "buildings": [{"id": f"b{b:02d}", "name": f"B{b}", "grid": "g1", "floors": 30} for b in range(BUILDINGS)],
        "devices": [
            {"id": f"d{d:03d}", "building": f"b{d % BUILDINGS:02d}", "kind": "smoke", "floor": 1 + d % 30}
            for d in range(DEVICES)
        ],
    }
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _http_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _metric_or_zero(port: int) -> float:
    try:
        return _metric(port, "firegrid_readings_total")
    except OSError:
        return -1.0


def _bare_client(port: int, protocol: str) -> mqtt.Client:
    """The baseline speaks the same MQTT version as the gateway under test, with the same persistent session."""
    if protocol == "v311":
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False)
        client.connect("127.0.0.1", port)
        return client
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=mqtt.MQTTv5)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    properties.ReceiveMaximum = 1000
    client.connect("127.0.0.1", port, clean_start=False, properties=properties)
    return client


def _register_bare(port: int, protocol: str) -> None:
    client = _bare_client(port, protocol)
    client.loop_start()
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.subscribe("firegrid/+/+/telemetry", qos=1)
    if not subscribed.wait(10):
        raise RuntimeError("bare subscriber: no SUBACK")
    client.loop_stop()
    client.disconnect()


def _preload(port: int, n: int, workdir: Path) -> None:
    """Queue ``n`` readings (``n / DEVICES`` per device, distinct timestamps) with C mosquitto_pub."""
    per_device = n // DEVICES
    base = int(time.time() * 1000) - per_device * 10 - 60_000
    procs: list[subprocess.Popen[bytes]] = []
    for d in range(DEVICES):
        lines = b"".join(
            b'{"ts":%d,"seq":%d,"obscuration":%.2f,"battery":90}\n' % (base + i * 10, i, 0.1 + (i % 7) * 0.05)
            for i in range(per_device)
        )
        topic = f"firegrid/b{d % BUILDINGS:02d}/d{d:03d}/telemetry"
        proc = subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", topic, "-l", "-i", f"pre-{d}"],
            stdin=subprocess.PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(lines)
        proc.stdin.close()
        procs.append(proc)
        if len(procs) >= 16:
            procs.pop(0).wait()
    for proc in procs:
        proc.wait()


def _bare(port: int, n: int, protocol: str) -> float:
    """Drain rate of a bare subscriber, timed between 10 % and 90 % of the backlog (sustained, no start-up)."""
    got = 0
    done = threading.Event()
    marks: dict[int, float] = {}
    lo, hi = n // 10, n * 9 // 10

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        nonlocal got
        got += 1
        if got == lo or got == hi:
            marks[got] = time.perf_counter()
        if got >= n:
            done.set()

    client = _bare_client(port, protocol)
    client.on_message = on_message
    started = time.perf_counter()
    client.loop_start()
    if not done.wait(120):
        raise RuntimeError(f"bare subscriber got {got} of {n}")
    del started
    client.loop_stop()
    client.disconnect()
    return (hi - lo) / (marks[hi] - marks[lo])


def _gateway(config: Path, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                # FIREGRID_BENCH_PROFILE=out.prof: profile the gateway with cProfile (written at SIGTERM exit)
                *(
                    ["-m", "cProfile", "-o", os.environ["FIREGRID_BENCH_PROFILE"]]
                    if os.environ.get("FIREGRID_BENCH_PROFILE")
                    else []
                ),
                "-m",
                "gateway.tools.cli",
                "run",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _crossings(sample: Any, n: int, timeout: float, interval: float) -> tuple[float, float]:
    """Sample a growing count until it reaches ``n``; when it crossed 10 % and 90 % of ``n`` (interpolated)."""
    points: list[tuple[float, float]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = sample()
        points.append((time.perf_counter(), value))
        if value >= n:
            break
        time.sleep(interval)
    else:
        raise RuntimeError(f"count stuck at {points[-1][1] if points else 0} of {n}")

    def crossing(level: float) -> float:
        for (t0, v0), (t1, v1) in itertools.pairwise(points):
            if v1 >= level:
                return t0 + (t1 - t0) * ((level - v0) / (v1 - v0)) if v1 > v0 else t1
        return points[-1][0]

    return crossing(n * 0.1), crossing(n * 0.9)


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.perf_counter()
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def _mqtt_ok(port: int) -> bool:
    try:
        return bool(_http_json(f"http://127.0.0.1:{port}/readyz")["checks"]["mqtt"]["ok"])
    except Exception:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):
                pass
        except urllib.error.HTTPError as exc:  # 503 while not ready: look at the body
            return bool(json.loads(exc.read())["checks"]["mqtt"]["ok"])
        except Exception:
            return False
        return False


def one_run(n: int, *, broker_inflight: int = 1000, protocol: str = "v5", receive_max: int = 1000) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="firegrid-bench-"))
    broker = MosquittoServer(workdir=workdir / "mosquitto", max_inflight_messages=broker_inflight).start()
    influx = InfluxServer(workdir=workdir / "influx").start()
    http_port = free_port()
    config = _config(
        workdir,
        mqtt_url=broker.url,
        influx_url=influx.url,
        http_port=http_port,
        protocol=protocol,
        receive_max=receive_max,
    )
    log = workdir / "gateway.log"
    try:
        # 1. both subscribers register their persistent sessions, then leave
        _register_bare(broker.port, protocol)
        proc = _gateway(config, http_port, log)
        _wait(lambda: _mqtt_ok(http_port), 30, "gateway connect")
        proc.terminate()
        proc.wait(30)
        # 2. the backlog
        _preload(broker.port, n, workdir)
        # 3. bare paho drains its copy
        bare = _bare(broker.port, n, protocol)
        # 4. firegrid drains its copy
        proc = _gateway(config, http_port, log)
        _wait(lambda: _metric_or_zero(http_port) >= 0, 30, "gateway HTTP", interval=0.01)
        influx_marks: list[tuple[float, float]] = []
        counter = threading.Thread(
            target=lambda: influx_marks.append(_crossings(lambda: influx.count("smoke", "obscuration"), n, 300, 0.05)),
            daemon=True,
        )
        counter.start()
        ack10, ack90 = _crossings(lambda: _metric_or_zero(http_port), n, 300, 0.05)
        counter.join(300)
        proc.terminate()
        proc.wait(30)
        _influx10, influx90 = influx_marks[0]
        # Hand-off: 10 % -> 90 % of the backlog PUBACKed.  Whole pipeline: from the hand-off passing 10 % to
        # InfluxDB holding 90 % (so the writer's lag behind the acknowledgements counts against us).
        return {
            "n": n,
            "bare": bare,
            "acked": 0.8 * n / (ack90 - ack10),
            "influx": 0.8 * n / (influx90 - ack10),
        }
    finally:
        broker.stop()
        influx.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _fmt(values: list[float], digits: int = 0) -> str:
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} ({min(values):,.{digits}f}–{max(values):,.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 readings, one run, print only")
    parser.add_argument("--json", action="store_true", help="one JSON result line last (for bench/run.py)")
    parser.add_argument("--readings", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--protocol", choices=("v5", "v311"), default="v5", help="the gateway's MQTT protocol")
    parser.add_argument("--broker-inflight", type=int, default=1000, help="Mosquitto max_inflight_messages")
    parser.add_argument("--receive-max", type=int, default=1000, help="mqtt.max_inflight (v5 Receive Maximum)")
    args = parser.parse_args(argv)
    n = args.readings or (20_000 if args.quick else 50_000 if args.json else 100_000)
    runs = args.runs or (1 if args.quick or args.json else 3)
    results = []
    for i in range(runs):
        result = one_run(n, broker_inflight=args.broker_inflight, protocol=args.protocol, receive_max=args.receive_max)
        results.append(result)
        print(
            f"run {i + 1}: bare paho {result['bare']:,.0f}/s; firegrid handed off {result['acked']:,.0f}/s "
            f"({result['acked'] / result['bare']:.0%}), in InfluxDB {result['influx']:,.0f}/s "
            f"({result['influx'] / result['bare']:.0%})",
            flush=True,
        )
    bare = [r["bare"] for r in results]
    acked = [r["acked"] for r in results]
    influx = [r["influx"] for r in results]
    ratio_ack = [r["acked"] / r["bare"] for r in results]
    ratio_influx = [r["influx"] / r["bare"] for r in results]
    command = (
        "python -m bench.ingest"
        + (" --quick" if args.quick else "")
        + (f" --readings {args.readings}" if args.readings else "")
    )
    table = "\n".join(
        [
            "| figure | value |",
            "|---|---|",
            f"| bare paho QoS 1 subscriber (counts only) | {_fmt(bare)} readings/s |",
            f"| firegrid, durably handed off and PUBACKed | {_fmt(acked)} readings/s |",
            f"| firegrid, all the way into InfluxDB | {_fmt(influx)} readings/s |",
            f"| **ratio, InfluxDB-complete / bare** | **{_fmt([r * 100 for r in ratio_influx])} %** |",
            f"| ratio, handed off / bare | {_fmt([r * 100 for r in ratio_ack])} % |",
        ]
    )
    if args.json:
        from bench.common import Figure, emit

        bare_m = statistics.median(bare)
        emit(
            "ingest",
            [
                Figure(
                    name="ingest.readings_per_s",
                    label="Ingest, whole pipeline into InfluxDB",
                    value=statistics.median(influx),
                    unit="readings/s",
                    baseline=bare_m,
                    baseline_label="bare paho QoS 1 subscriber",
                    goal=">= 0.5x bare paho",
                    goal_on="ratio",
                    goal_min=0.5,
                ),
                Figure(
                    name="ingest.handed_off_per_s",
                    label="Ingest, durably handed off + PUBACK",
                    value=statistics.median(acked),
                    unit="readings/s",
                    baseline=bare_m,
                    baseline_label="bare paho QoS 1 subscriber",
                ),
            ],
            as_json=True,
            quick=args.quick,
            notes=["backlog drain of a persistent session, timed between 10 % and 90 % of the backlog"],
            conditions={"readings": n, "devices": DEVICES},
        )
        return 0
    print(table)
    custom = (args.protocol, args.broker_inflight, args.receive_max) != ("v5", 1000, 1000)
    if not args.quick and not args.no_doc and not custom:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        section = (
            f"{BEGIN}\n"
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine}; `{command}`; "
            f"{n:,} readings from {DEVICES} devices, MQTT 5 on both sides; median of {runs} runs (min–max)."
            f"\n\n{table}\n{END}"
        )
        write_doc(section)
    return 0


def write_doc(section: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        _, after = rest.split(END, 1)
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n## Ingest\n\n" + section + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
