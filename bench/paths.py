"""Other paths benchmark: readings/s into the pipeline through a UITD (GB/T 26875.3 frames over TCP) and through
plain HTTP pushes, against the MQTT path of the same ``firegrid run``, in the same run.

One real gateway process (Mosquitto, InfluxDB, the default rules); each path sends N readings and is timed from its
first send to the moment the gateway's ``firegrid_readings_total`` has grown by N (committed: spool fsync + SQLite).

* MQTT: one paho QoS 1 publisher with up to 2,000 messages in flight (devices publish independently, so the broker
  holds many at once): the baseline;
* UITD: ``C`` panels, each a TCP connection that sends a part status frame and waits for its confirm before the next
  (a UITD's stop-and-wait, as the standard's confirm makes it);
* HTTP: ``C`` clients, each posting a telemetry payload and waiting for its answer (which follows the commit).

The two figures are ratios to the MQTT path: stop-and-wait senders are bound by the commit latency, the MQTT path by
throughput; ``C`` (concurrent senders) is in the conditions.

    python -m bench.paths            # 3,000 readings per path
    python -m bench.paths --quick    # 400 per path
"""

from __future__ import annotations

import concurrent.futures
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import Figure, bench_parser, emit  # noqa: E402
from testkit.gateway import Gateway, Publisher, wait_for  # noqa: E402
from testkit.services import InfluxServer, MosquittoServer, free_port  # noqa: E402
from testkit.uitd_panel import NORMAL, Panel, part_status_frame  # noqa: E402

TIMEOUT_S = 240
CONCURRENCY = 16
POINTS = 10  # per panel
DEVICES = 200
INGEST = "bench-ingest-token"


def _config(workdir: Path, *, mqtt_url: str, influx_url: str, http_port: int, uitd_port: int) -> Path:
    buildings = [{"id": f"b{b:02d}", "name": f"B{b}", "grid": "g1", "floors": 30} for b in range(CONCURRENCY)]
    devices = [
        {"id": f"d{d:03d}", "building": f"b{d % CONCURRENCY:02d}", "kind": "smoke", "floor": 1 + d % 30}
        for d in range(DEVICES)
    ]
    panels = []
    for p in range(CONCURRENCY):
        points = []
        for n in range(POINTS):
            device = f"p{p:02d}-{n:02d}"
            devices.append({"id": device, "building": f"b{p:02d}", "kind": "panel_point", "floor": 1 + n})
            points.append({"system_type": 1, "system_address": 1, "part_address": n, "device": device})
        panels.append({"address": 0x1000 + p, "building": f"b{p:02d}", "points": points})
    config = {
        "mqtt": {"url": mqtt_url, "client_id": "bench-paths", "session_expiry_s": 3600, "max_inflight": 1000},
        "influx": {"url": influx_url, "batch_size": 5000, "flush_interval_s": 0.5, "spool_dir": str(workdir / "spool")},
        "store": {"path": str(workdir / "firegrid.sqlite")},
        "http": {"listen": f"127.0.0.1:{http_port}", "tokens": [{"name": "b", "token": INGEST, "role": "ingest"}]},
        "log": {"level": "warning"},
        "uitd": {"listen": f"127.0.0.1:{uitd_port}", "panels": panels},
        "buildings": buildings,
        "devices": devices,
    }
    path = workdir / "paths.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _timed(gateway: Gateway, n: int, send: Any) -> float:
    """Seconds from the first send until the gateway has committed ``n`` more readings."""
    before = gateway.metric("firegrid_readings_total")
    started = time.perf_counter()
    send()
    wait_for(
        lambda: gateway.metric("firegrid_readings_total") >= before + n,
        timeout=TIMEOUT_S,
        what=f"{n} readings committed",
        interval=0.02,
    )
    return time.perf_counter() - started


def _mqtt_messages(n: int) -> list[tuple[str, bytes]]:
    """Encoded before the clock starts, like the frames and bodies of the other paths are built per send."""
    now = int(time.time() * 1000)
    out = []
    for i in range(n):
        d = i % DEVICES
        payload = json.dumps({"ts": now + i, "seq": 1_000_000 + i, "obscuration": 0.1}).encode()
        out.append((f"firegrid/b{d % CONCURRENCY:02d}/d{d:03d}/telemetry", payload))
    return out


def _mqtt(publisher: Publisher, messages: list[tuple[str, bytes]]) -> None:
    for topic, payload in messages:
        publisher.publish(topic, payload)
    publisher.wait_acked()


def _uitd(port: int, n: int) -> None:
    per_panel = n // CONCURRENCY

    def panel(p: int) -> None:
        connection = Panel(port)
        try:
            for i in range(per_panel):
                raw = part_status_frame(serial=i + 1, source=0x1000 + p, parts=[(1, 1, 0, i % POINTS, NORMAL)])
                connection.send(raw)
                if connection.answer(i + 1, timeout=30) is None:
                    raise RuntimeError(f"panel {p}: no confirm for frame {i + 1}")
                connection.frames.clear()
        finally:
            connection.close()

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(panel, range(CONCURRENCY)))


def _http(port: int, n: int) -> None:
    per_client = n // CONCURRENCY
    now = int(time.time() * 1000)

    def client(c: int) -> None:
        for i in range(per_client):
            d = (c + i * CONCURRENCY) % DEVICES
            body = json.dumps({"ts": now + i, "seq": 2_000_000 + c * per_client + i, "obscuration": 0.1}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/ingest/b{d % CONCURRENCY:02d}/d{d:03d}/telemetry",
                data=body,
                method="POST",
                headers={"Authorization": f"Bearer {INGEST}", "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                if response.status != 200:
                    raise RuntimeError(f"HTTP push answered {response.status}")

    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(client, range(CONCURRENCY)))


def main() -> None:
    args = bench_parser(__doc__.splitlines()[0]).parse_args()
    n = 400 if args.quick else 3000
    n -= n % CONCURRENCY
    with tempfile.TemporaryDirectory(prefix="firegrid-bench-paths-") as tmp:
        workdir = Path(tmp)
        mosquitto = MosquittoServer(workdir=workdir / "mosquitto").start()
        influx = InfluxServer(workdir=workdir / "influx").start()
        gateway: Gateway | None = None
        try:
            http_port, uitd_port = free_port(), free_port()
            config = _config(
                workdir, mqtt_url=mosquitto.url, influx_url=influx.url, http_port=http_port, uitd_port=uitd_port
            )
            gateway = Gateway(config, http_port, workdir / "gateway.log").start()
            publisher = Publisher(mosquitto.port, client_id="bench-paths-pub")
            messages = _mqtt_messages(n)
            try:
                mqtt_s = _timed(gateway, n, lambda: _mqtt(publisher, messages))
            finally:
                publisher.close()
            uitd_s = _timed(gateway, n, lambda: _uitd(uitd_port, n))
            http_s = _timed(gateway, n, lambda: _http(http_port, n))
        finally:
            if gateway is not None:
                gateway.stop()
            influx.stop()
            mosquitto.stop()
    mqtt_rate = n / mqtt_s
    figures = [
        Figure("paths.mqtt_readings_per_s", mqtt_rate, "readings/s", label="MQTT path (QoS 1, 2,000 in flight)"),
        Figure(
            "paths.uitd_frames_per_s",
            n / uitd_s,
            "frames/s",
            label=f"UITD frames, {CONCURRENCY} panels stop-and-wait",
            baseline=mqtt_rate,
            baseline_label="MQTT path",
        ),
        Figure(
            "paths.http_pushes_per_s",
            n / http_s,
            "pushes/s",
            label=f"HTTP pushes, {CONCURRENCY} clients stop-and-wait",
            baseline=mqtt_rate,
            baseline_label="MQTT path",
        ),
    ]
    emit(
        "paths",
        figures,
        as_json=args.json,
        quick=args.quick,
        notes=["each UITD confirm and HTTP answer waits for the group commit (spool fsync + SQLite)"],
        conditions={"readings_per_path": n, "concurrent_senders": CONCURRENCY},
    )


if __name__ == "__main__":
    threading.current_thread().name = "bench-paths"
    main()
