"""Soak: the whole stack at a steady load with periodic faults; reports memory growth, lag, lost and duplicated.

    python -m bench.soak --minutes 10 [--rate 500] [--fault-every 30] [--influx-outage 120] [--replay-window 60]
                         [--quick] [--json] [--out FILE] [--mem-trace DIR [--mem-trace-frames N]]

Stack: real Mosquitto (persistence on), real InfluxDB 1.x, ``firegrid run`` as a subprocess, a Standard Webhooks
receiver counting ``webhook-id``s (testkit/faults.py).  Load: ``--rate`` QoS 1 readings/s from 200 smoke
detectors in 10 buildings; 8 of them toggle in and out of alarm (raised/cleared transitions, notifications).

Faults, one every ``--fault-every`` seconds, in rotation:
  gateway SIGKILL + restart (first half of the run only, so the second half measures memory of ONE process),
  Mosquitto SIGKILL + restart, InfluxDB stopped for ``--influx-outage`` s (capped to fit the run), webhook receiver
  answering 503 for 10 s.

Reported (``--json``: one object on the last line):
* memory: gateway RSS from the later of (half time, last gateway kill) + ``--replay-window`` + 15 s to the end, growth
  in %.  The replay memory (``contract.replay_window_s``, 600 s by default) grows for one window and is flat after
  it, so the soak sets the window to ``--replay-window`` (60 s) to measure growth past it in a 10-minute run;
* lag: the gateway's end-to-end lag histogram (device timestamp -> committed) mean and p99 bucket, and
  reading-to-webhook latency of alarm raises (p50/p99 ms);
* lost: readings published and acknowledged by the broker minus points in InfluxDB (only a Mosquitto SIGKILL may
  lose readings: those it had not yet saved, bounded by ``autosave_interval``); alarm devices without an alert;
* duplicated: alert keys with more than one alert row; notification ids accepted more than once, split into those
  within 1 s before a gateway kill (at-least-once by design, same id) and any others (a bug).

``--mem-trace DIR``: allocator statistics from inside every gateway process, and tracemalloc snapshots of the second
half's process (see MEMTRACE_PROBE below; docs/reliability.md, the 60-minute soak).  The soak's memory figure then
includes the probe's own memory once tracemalloc runs; ``--mem-trace-frames 0`` keeps only the cheap statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testkit.faults import (  # noqa: E402
    FAST_RULES,
    WEBHOOK_SECRET,
    stack_config,
    start_influx,
    wait_until,
)
from testkit.gateway import Gateway, Publisher  # noqa: E402
from testkit.services import InfluxServer, MosquittoServer  # noqa: E402
from testkit.webhooks import WebhookCounter  # noqa: E402

DEVICES = 200
BUILDINGS = 10
ALARM_DEVICES = tuple(range(0, 200, 25))  # 8 detectors, spread over the buildings
CRASH_WINDOW_S = 1.0


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Load(threading.Thread):
    def __init__(self, publisher: Publisher, *, rate: float) -> None:
        super().__init__(daemon=True, name="soak-load")
        self.publisher = publisher
        self.rate = rate
        self.stop_event = threading.Event()
        self.published = 0
        self.last_ts: dict[int, int] = {}
        self.alarm_on: dict[int, float] = {}  # device -> monotonic time its current alarm episode began

    def run(self) -> None:
        started = time.monotonic()
        step = 0
        while not self.stop_event.is_set():
            elapsed = time.monotonic() - started
            for d in range(DEVICES):
                alarm = d in ALARM_DEVICES and (elapsed + d * 0.7) % 20 < 4  # 4 s in alarm every 20 s
                if alarm and d not in self.alarm_on:
                    self.alarm_on[d] = time.monotonic()
                elif not alarm:
                    self.alarm_on.pop(d, None)
                # device time = wall time (so the lag figure means something), strictly increasing per device
                ts = self.last_ts[d] = max(int(time.time() * 1000), self.last_ts.get(d, 0) + 1)
                payload: dict[str, Any] = {"ts": ts, "seq": step, "obscuration": 0.2}
                if d in ALARM_DEVICES:
                    payload["alarm"] = alarm
                self.publisher.publish(f"firegrid/b{d % BUILDINGS:02d}/d{d:03d}/telemetry", json.dumps(payload))
                self.published += 1
                if self.published % 50 == 0:
                    delay = started + self.published / self.rate - time.monotonic()
                    if delay > 0:
                        self.stop_event.wait(delay)
            step += 1


# ``--mem-trace DIR``: written as ``sitecustomize.py`` into DIR, which is put on the gateway's PYTHONPATH, so the
# gateway itself is unchanged and without the flag nothing is imported or sampled.  In each gateway process a thread
# appends one JSON line every 15 s to DIR/mem-<pid>.jsonl: RSS, glibc ``mallinfo2``, SQLite's own memory
# (``sqlite3_memory_used``: its page caches, on the glibc heap and invisible to tracemalloc), pymalloc's arenas and
# blocks (``sys._debugmallocstats``, which prints nothing while tracemalloc runs) and tracemalloc's totals; every
# 300 s of process life the count of gc-tracked objects by type (types-<pid>-<uptime>.json).  tracemalloc starts
# only at the wall-clock time FIREGRID_SOAK_MEMTRACE_TRACE_AT (the soak sets it to half time + 5 min, in the one
# process of the second half), then takes a snapshot every 300 s (snap-<pid>-<uptime>.pickle) for diffs between two
# moments of one process: traced from its start, the gateway kept up neither with 500 readings/s nor with its 60 s
# ready deadline after a restart on the 2-core machine.  ``--mem-trace-frames 0``: statistics only, no tracemalloc.
MEMTRACE_PROBE = """
import os

_DIR = os.environ.get("FIREGRID_SOAK_MEMTRACE")
if _DIR:
    import collections, ctypes, gc, json, sys, tempfile, threading, time, tracemalloc

    _FRAMES = int(os.environ.get("FIREGRID_SOAK_MEMTRACE_FRAMES", "8"))
    _TRACE_AT = float(os.environ.get("FIREGRID_SOAK_MEMTRACE_TRACE_AT", "0"))
    _PERIOD = float(os.environ.get("FIREGRID_SOAK_MEMTRACE_PERIOD", "15"))
    _SNAP_EVERY = float(os.environ.get("FIREGRID_SOAK_MEMTRACE_SNAP_EVERY", "300"))

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    try:
        _libc = ctypes.CDLL(None)
        _libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        _libc = None

    try:  # the library the sqlite3 module uses (loading it again shares the one instance)
        _sqlite = ctypes.CDLL("libsqlite3.so.0")
        _sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except (OSError, AttributeError):
        _sqlite = None

    _PYMALLOC_KEYS = ("arenas allocated current", "arenas highwater mark", "bytes in allocated blocks",
                      "bytes in available blocks", "bytes lost to pool headers", "bytes lost to quantization",
                      "bytes lost to arena alignment")

    def _pymalloc():
        # sys._debugmallocstats prints to C stderr: point fd 2 at a temp file for the call
        with tempfile.TemporaryFile() as tmp:
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
                if _libc is not None:
                    _libc.fflush(None)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
        out = {}
        for line in text.splitlines():
            if line.startswith("#") and "=" in line:
                key, _, value = line[1:].rpartition("=")
                key = key.strip()
                if key in _PYMALLOC_KEYS:
                    out[key.replace(" ", "_")] = int(value.strip().replace(",", ""))
        return out

    def _rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run():
        pid = os.getpid()
        began = time.monotonic()
        next_types = _SNAP_EVERY
        next_snap = None
        with open(os.path.join(_DIR, f"mem-{pid}.jsonl"), "a") as log:
            while True:
                time.sleep(_PERIOD)
                up = time.monotonic() - began
                if _FRAMES > 0 and _TRACE_AT and not tracemalloc.is_tracing() and time.time() >= _TRACE_AT:
                    tracemalloc.start(_FRAMES)
                    next_snap = up + _SNAP_EVERY
                row = {"pid": pid, "wall": time.time(), "uptime": round(up, 1), "rss": _rss(),
                       "py_blocks": sys.getallocatedblocks(), "gc_counts": gc.get_count()}
                if _libc is not None:
                    mi = _libc.mallinfo2()
                    row["glibc"] = {n: getattr(mi, n) for n, _ in _Mallinfo2._fields_}
                if _sqlite is not None:
                    row["sqlite"] = _sqlite.sqlite3_memory_used()  # its page caches: glibc heap, not traced
                row["pymalloc"] = _pymalloc()
                if tracemalloc.is_tracing():
                    row["traced"], row["traced_peak"] = tracemalloc.get_traced_memory()
                    row["tracemalloc_overhead"] = tracemalloc.get_tracemalloc_memory()
                tag = f"{pid}-{int(up):05d}"
                if up >= next_types:
                    next_types += _SNAP_EVERY
                    types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
                    with open(os.path.join(_DIR, f"types-{tag}.json"), "w") as f:
                        json.dump(dict(types.most_common(300)), f)
                    row["types"] = tag
                if next_snap is not None and up >= next_snap:
                    next_snap += _SNAP_EVERY
                    tracemalloc.take_snapshot().dump(os.path.join(_DIR, f"snap-{tag}.pickle"))
                    row["snapshot"] = tag
                log.write(json.dumps(row) + "\\n")
                log.flush()

    threading.Thread(target=_run, name="soak-memtrace", daemon=True).start()
"""


def enable_memtrace(directory: Path, *, frames: int, trace_at: float) -> None:
    """Make the gateway processes the soak starts from now on load MEMTRACE_PROBE (see above); tracemalloc from
    ``trace_at`` (epoch s)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(MEMTRACE_PROBE)
    os.environ["FIREGRID_SOAK_MEMTRACE"] = str(directory)
    os.environ["FIREGRID_SOAK_MEMTRACE_FRAMES"] = str(frames)
    os.environ["FIREGRID_SOAK_MEMTRACE_TRACE_AT"] = str(trace_at)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)


def histogram(text: str, name: str) -> dict[str, Any]:
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket"):
            le = re.search(r'le="([^"]+)"', line)
            if le:
                buckets.append((float(le.group(1)), float(line.rsplit(" ", 1)[1])))
        elif line.startswith(f"{name}_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count = float(line.rsplit(" ", 1)[1])
    p99 = None
    for bound, cumulative in sorted(buckets):
        if count and cumulative >= 0.99 * count:
            p99 = bound
            break
    return {"count": count, "mean_s": (total / count) if count else None, "p99_bucket_s": p99}


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def soak(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="firegrid-soak-"))
    duration = args.minutes * 60
    mosquitto = MosquittoServer(workdir=work / "mosquitto").start()
    if args.mem_trace is not None:
        # tracemalloc in the second half's one process only, once it is warm (see MEMTRACE_PROBE)
        enable_memtrace(args.mem_trace, frames=args.mem_trace_frames, trace_at=time.time() + duration / 2 + 300)
    influx = InfluxServer(workdir=work / "influx").start()
    hook = WebhookCounter(WEBHOOK_SECRET).start()
    config, port = stack_config(
        work,
        mqtt_url=mosquitto.url,
        influx_url=influx.url,
        webhook_url=hook.url,
        devices=DEVICES,
        buildings=BUILDINGS,
        rules=FAST_RULES,
        client_id="gw-soak",
        extra={"log": {"level": "warning", "format": "json"}, "contract": {"replay_window_s": args.replay_window}},
    )
    gateway = Gateway(config, port, work / "gateway.log").start()
    publisher = Publisher(mosquitto.port, client_id="soak-pub", max_outstanding=5000)
    load = Load(publisher, rate=args.rate)
    events: list[dict[str, Any]] = []
    kills: list[float] = []
    rss: list[tuple[float, float]] = []
    broker_kills: list[float] = []
    started = time.monotonic()
    half = started + duration / 2
    rotation = ["gateway", "broker", "influx", "webhook"]
    next_fault = started + args.fault_every
    fault_index = 0
    influx_back_at: float | None = None
    webhook_back_at: float | None = None
    raise_latency_ms: list[float] = []
    seen_raises: set[str] = set()
    try:
        load.start()
        while (now := time.monotonic()) < started + duration:
            if gateway.proc is not None and (value := rss_mb(gateway.proc.pid)) is not None:
                rss.append((now - started, value))
            if influx_back_at is not None and now >= influx_back_at:
                start_influx(influx)
                events.append({"t": round(now - started, 1), "fault": "influx started"})
                influx_back_at = None
            if webhook_back_at is not None and now >= webhook_back_at:
                hook.script.clear()
                webhook_back_at = None
            # reading-to-webhook latency for alarm raises (first delivery of each alert.raised id)
            for hit in hook.of_type("alert.raised"):
                if hit.msg_id in seen_raises:
                    continue
                seen_raises.add(hit.msg_id)
                device = hit.data.get("device")
                began = next((t for d, t in load.alarm_on.copy().items() if f"d{d:03d}" == device), None)
                if began is not None and hit.at >= began:
                    raise_latency_ms.append((hit.at - began) * 1000)
            if now >= next_fault:
                kind = rotation[fault_index % len(rotation)]
                fault_index += 1
                if kind == "gateway" and now >= half:
                    kind = "broker"  # the second half keeps one gateway process alive for the memory figure
                if kind == "influx" and influx_back_at is not None:
                    kind = "broker"
                if kind == "gateway":
                    gateway.kill()
                    kills.append(time.monotonic())
                    gateway.start(ready_timeout=60)
                elif kind == "broker":
                    mosquitto.kill()
                    broker_kills.append(time.monotonic())
                    mosquitto.start()
                elif kind == "influx":
                    influx.stop()
                    outage = min(args.influx_outage, max(5.0, started + duration - now - 30))
                    influx_back_at = now + outage
                elif kind == "webhook":
                    hook.script.extend([503] * 10_000)
                    webhook_back_at = now + 10
                events.append({"t": round(now - started, 1), "fault": kind})
                next_fault = now + args.fault_every
            time.sleep(1.0)  # the soak's sampling period
        load.stop_event.set()
        load.join(30)
        if influx_back_at is not None:
            start_influx(influx)
        hook.script.clear()
        publisher.wait_acked(timeout=300)
        total = load.published
        _, metrics_text = gateway.get("/metrics")
        lag = histogram(metrics_text, "firegrid_end_to_end_lag_seconds")
        # InfluxDB catches up; only a broker SIGKILL may have lost readings (what it had not yet saved)
        try:
            wait_until(lambda: influx.count("smoke", "obscuration") >= total, timeout=90, what="every reading")
        except AssertionError as exc:
            events.append({"t": round(time.monotonic() - started, 1), "note": str(exc)[:200]})
        try:
            wait_until(
                lambda: gateway.metric("firegrid_spool_depth_points") == 0, timeout=120, what="the spool to drain"
            )
        except AssertionError as exc:
            events.append({"t": round(time.monotonic() - started, 1), "error": str(exc)[:200]})
        stored = influx.count("smoke", "obscuration")
        db = work / "firegrid.sqlite"
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            keys = Counter(k for (k,) in conn.execute("SELECT key FROM alerts"))
            pending = conn.execute("SELECT count(*) FROM outbox WHERE state != 'sent'").fetchone()[0]
        accepted = hook.accepted()
        first: dict[str, float] = {}
        dup_window = dup_other = 0
        for hit in sorted(accepted, key=lambda h: h.at):
            if hit.msg_id not in first:
                first[hit.msg_id] = hit.at
            elif any(first[hit.msg_id] <= k <= first[hit.msg_id] + CRASH_WINDOW_S for k in kills):
                dup_window += 1
            else:
                dup_other += 1
        # after the last gateway kill AND a full replay window (the replay memory fills for that long, then is flat)
        warm = max(duration / 2, (kills[-1] - started) if kills else 0) + args.replay_window + 15
        second_half = [(t, v) for t, v in rss if t >= warm]
        growth = None
        if len(second_half) >= 2:
            start_rss = min(v for _, v in second_half[:5])
            end_rss = max(v for _, v in second_half[-5:])
            growth = {
                "from_s": round(second_half[0][0]),
                "start_mb": round(start_rss, 1),
                "end_mb": round(end_rss, 1),
                "growth_pct": round(100 * (end_rss - start_rss) / start_rss, 1),
            }
        wanted = {f"smoke-alarm/b{d % BUILDINGS:02d}/d{d:03d}" for d in ALARM_DEVICES}
        return {
            "bench": "soak",
            "minutes": args.minutes,
            "rate": args.rate,
            "published": total,
            "stored_in_influx": stored,
            "lost_readings": total - stored,
            "broker_kills": len(broker_kills),
            "gateway_kills": len(kills),
            "lost_alarm_devices": sorted(wanted - set(keys)),
            "alerts_raised_twice": sorted(k for k, n in keys.items() if n > 1),
            "notifications_accepted": len(first),
            "notifications_not_delivered": pending,
            "duplicate_notifications_in_crash_window": dup_window,
            "duplicate_notifications_other": dup_other,
            "bad_signatures": sum(1 for h in hook.snapshot() if not h.signature_ok),
            "memory": growth,
            "end_to_end_lag": lag,
            "raise_to_webhook_ms": {
                "n": len(raise_latency_ms),
                "p50": percentile(raise_latency_ms, 50),
                "p99": percentile(raise_latency_ms, 99),
            },
            "spool_dropped_points": gateway.metric("firegrid_spool_dropped_points_total"),
            "gateway_alive": gateway.proc is not None and gateway.proc.poll() is None,
            "faults": events,
            "rss_mb_every_30s": [(round(t), round(v, 1)) for t, v in rss[::30]],
            "workdir": str(work),
        }
    finally:
        load.stop_event.set()
        publisher.close()
        gateway.stop()
        hook.stop()
        influx.stop()
        mosquitto.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=500.0, help="readings/s")
    parser.add_argument("--fault-every", type=float, default=30.0, help="seconds between faults")
    parser.add_argument("--influx-outage", type=float, default=120.0, help="seconds InfluxDB stays down")
    parser.add_argument(
        "--replay-window",
        type=int,
        default=60,
        help="contract.replay_window_s for the run (the replay memory grows for this long, then stays flat)",
    )
    parser.add_argument("--quick", action="store_true", help="a 1-minute smoke run")
    parser.add_argument(
        "--mem-trace",
        type=Path,
        help="directory for the gateway's allocator statistics every 15 s and, from half time + 5 min, tracemalloc "
        "snapshots every 5 min (bench/soak.py MEMTRACE_PROBE)",
    )
    parser.add_argument(
        "--mem-trace-frames", type=int, default=8, help="tracemalloc frames with --mem-trace (0: statistics only)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.fault_every, args.influx_outage = 1.0, 10.0, 8.0
    result = soak(args)
    ok = (
        result["lost_alarm_devices"] == []
        and result["alerts_raised_twice"] == []
        and result["duplicate_notifications_other"] == 0
        and result["notifications_not_delivered"] == 0
        and result["bad_signatures"] == 0
        and result["gateway_alive"]
    )
    result["ok"] = ok
    text = json.dumps(result, indent=None if args.json else 2)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
