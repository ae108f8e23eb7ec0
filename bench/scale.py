"""Bench: a district on one gateway — 100,000 registered devices in 2,000 buildings.

Generates a config with that registry (YAML, as an operator would keep it), starts ``firegrid run`` against a private
broker and InfluxDB, and measures:

* startup time: process start → ``/readyz`` answers 200 (config load and validation, registry, store, MQTT);
* RSS once ready and after the API was queried;
* ``GET /api/v1/buildings`` latency (p50/p99/max over sequential requests with a viewer token), and its size;
* p50 of the per-building views (``/buildings/{id}``, ``/devices?building={id}``: they should not grow with the
  district) and p50/p99 of the dashboard's whole-registry scan ``/devices?status=offline``.

    python -m bench.scale                 # 100,000 devices / 2,000 buildings
    python -m bench.scale --quick         # 10,000 / 200
"""

from __future__ import annotations

import math
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Figure,
    FiregridProcess,
    bench_parser,
    emit,
    firegrid_config,
    percentile,
    rss_mb,
    services,
)

RUNS = 1  # one run with 100,000 devices takes minutes (startup is YAML parsing); three would not fit
TIMEOUT_S = 300
TOKEN = "bench-viewer-token-0123456789"
REQUEST_TIMEOUT_S = 60.0
REQUEST_BUDGET_S = 30.0
KINDS = ("smoke", "smoke", "smoke", "heat", "extinguisher", "call_point")  # a plausible mix per building


def registry(*, buildings: int, devices: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    per = devices // buildings
    out_b = [
        {"id": f"b{b:05d}", "name": f"Building {b}", "grid": f"g{b % 40:02d}", "floors": 30, "basements": 2}
        for b in range(buildings)
    ]
    out_d = []
    for b in range(buildings):
        for d in range(per):
            out_d.append(
                {"id": f"b{b:05d}-d{d:03d}", "building": f"b{b:05d}", "kind": KINDS[d % len(KINDS)], "floor": d % 30}
            )
    return out_b, out_d


def _get(url: str, *, timeout: float) -> tuple[float, int, int]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return (time.perf_counter() - start) * 1000, exc.code, 0
    return (time.perf_counter() - start) * 1000, status, len(body)


def _series(url: str, n: int, notes: list[str]) -> list[float]:
    """Up to ``n`` sequential GETs of ``url`` (for at most REQUEST_BUDGET_S): the latencies of those answered 200."""
    out: list[float] = []
    budget_end = time.monotonic() + REQUEST_BUDGET_S
    for _ in range(n):
        try:
            ms, status, _size = _get(url, timeout=REQUEST_TIMEOUT_S)
        except (TimeoutError, urllib.error.URLError, OSError) as exc:
            notes.append(f"GET {url} gave up after {REQUEST_TIMEOUT_S:.0f} s: {exc}")
            break
        if status != 200:
            notes.append(f"GET {url} answered {status}")
            break
        out.append(ms)
        if time.monotonic() > budget_end:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--buildings", type=int, default=None)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    n_dev = args.devices or (10_000 if args.quick else 100_000)
    n_bld = args.buildings or (200 if args.quick else 2000)
    n_req = args.requests or (10 if args.quick else 50)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        base = args.workdir or Path(tmp)
        buildings, devices = registry(buildings=n_bld, devices=n_dev)
        with services(base / "services") as svc:
            config = firegrid_config(
                broker_port=svc.broker.port,
                influx_url=svc.influx.url,
                workdir=base / "firegrid",
                buildings=buildings,
                devices=devices,
                tokens=[{"name": "bench", "token": TOKEN, "role": "viewer"}],
            )
            gateway = FiregridProcess(config=config, workdir=base / "firegrid")
            try:
                gateway.start(timeout=240)
            except BenchError as exc:
                emit("scale", [], as_json=args.json, quick=args.quick, notes=[f"not measured: {exc}"])
                return 2
            try:
                config_mb = gateway.config_path.stat().st_size / 1e6
                rss_ready = rss_mb(gateway.pid)
                url = f"{gateway.http_base}/api/v1/buildings"
                latencies: list[float] = []
                timed_out = False
                size = 0
                status = 0
                # Sequential requests, but at most REQUEST_BUDGET_S of them: a slow endpoint is reported, not waited
                # out 50 times.
                budget_end = time.monotonic() + REQUEST_BUDGET_S
                for _ in range(n_req):
                    try:
                        ms, status, size = _get(url, timeout=REQUEST_TIMEOUT_S)
                    except (TimeoutError, urllib.error.URLError, OSError) as exc:
                        notes.append(f"GET /api/v1/buildings gave up after {REQUEST_TIMEOUT_S:.0f} s: {exc}")
                        timed_out = True
                        break
                    if status != 200:
                        break
                    latencies.append(ms)
                    if time.monotonic() > budget_end:
                        notes.append(f"only {len(latencies)} requests: they took over {REQUEST_BUDGET_S:.0f} s")
                        break
                if status not in (0, 200):
                    notes.append(f"GET /api/v1/buildings answered {status}")
                one = buildings[len(buildings) // 2]["id"]
                views = {
                    "building": _series(f"{gateway.http_base}/api/v1/buildings/{one}", n_req, notes),
                    "building_devices": _series(f"{gateway.http_base}/api/v1/devices?building={one}", n_req, notes),
                    "offline_scan": _series(
                        f"{gateway.http_base}/api/v1/devices?status=offline&limit=1000", n_req, notes
                    ),
                }
                rss_after = rss_mb(gateway.pid)
            finally:
                gateway.stop()
    notes.append(f"config file {config_mb:.1f} MB of YAML; response {size / 1e3:.0f} kB")
    figures = [
        Figure(
            name="scale.startup_s",
            label=f"startup to /readyz, {n_dev:,} devices",
            value=gateway.ready_after_s,
            unit="s",
            better="lower",
        ),
        Figure(name="scale.rss_ready_mb", label="RSS once ready", value=rss_ready, unit="MiB", better="lower"),
        Figure(
            name="scale.rss_after_api_mb",
            label="RSS after the API requests",
            value=rss_after,
            unit="MiB",
            better="lower",
        ),
        Figure(
            name="scale.buildings_first_ms",
            label="GET /api/v1/buildings, first request" + (" (gave up: at least this)" if timed_out else ""),
            value=latencies[0] if latencies else REQUEST_TIMEOUT_S * 1000 if timed_out else math.nan,
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.buildings_p50_ms",
            label=f"GET /api/v1/buildings p50 ({n_bld:,} buildings)",
            value=percentile(latencies, 50),
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.buildings_p99_ms",
            label="GET /api/v1/buildings p99",
            value=percentile(latencies, 99),
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.buildings_max_ms",
            label="GET /api/v1/buildings max",
            value=max(latencies) if latencies else math.nan,
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.building_p50_ms",
            label="GET /api/v1/buildings/{id} p50 (one building)",
            value=percentile(views["building"], 50),
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.building_devices_p50_ms",
            label="GET /api/v1/devices?building={id} p50",
            value=percentile(views["building_devices"], 50),
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.offline_scan_p50_ms",
            label="GET /api/v1/devices?status=offline p50",
            value=percentile(views["offline_scan"], 50),
            unit="ms",
            better="lower",
        ),
        Figure(
            name="scale.offline_scan_p99_ms",
            label="GET /api/v1/devices?status=offline p99",
            value=percentile(views["offline_scan"], 99),
            unit="ms",
            better="lower",
        ),
    ]
    conditions = {"devices": n_dev, "buildings": n_bld, "requests": n_req}
    emit("scale", figures, as_json=args.json, quick=args.quick, notes=notes, conditions=conditions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
