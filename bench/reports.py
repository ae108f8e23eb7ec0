"""Bench: the monthly report of a large district — 2,000 buildings (50,000 devices) and a month of 50,000 incidents.

The store is filled directly (one transaction of rows shaped as the alert store writes them: incidents with their
lifecycle events, one alert each with its audit trail, device-health alerts) — what is measured is the report, not
ingestion.  Each format is then made by ``firegrid report --config FILE --month 2026-11 --out report.EXT`` as its
own process, as an operator runs it: wall time, and the process's peak RSS (``os.wait4``).

Baseline, in the same run and the same way (a process of its own): a bare Python script that opens the store with
sqlite3 and fetches every row of the month's incidents and alerts — the least any report must do.  The ratios say
what the figures, the charts and the layout cost on top.

    python -m bench.reports [--quick] [--json]
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import yaml

from bench.common import Figure, bench_parser, emit

RUNS = 1
TIMEOUT_S = 600
ROOT = Path(__file__).resolve().parent.parent
ZONE = ZoneInfo("Asia/Shanghai")
START = int(datetime(2026, 11, 1, tzinfo=ZONE).timestamp() * 1000)
END = int(datetime(2026, 12, 1, tzinfo=ZONE).timestamp() * 1000)
PER_BUILDING = 25
KINDS = ["smoke"] * 15 + ["heat"] * 4 + ["extinguisher"] * 5 + ["call_point"]

# Every measured process reports its own peak RSS as it exits: VmHWM belongs to the process's memory after exec
# (the rusage of a child would also count the bench's own pages, shared with it between fork and exec).
PEAK = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                print("VMHWM", line.split()[1], file=sys.stderr)
atexit.register(_peak)
"""

CLI = (
    PEAK
    + """
from gateway.tools.cli import main
sys.exit(main(sys.argv[1:]))
"""
)

BASELINE = (
    PEAK
    + """
import sqlite3
db = sqlite3.connect(sys.argv[1])
a = db.execute("SELECT * FROM incidents WHERE opened_ms >= ? AND opened_ms < ?", (int(sys.argv[2]), int(sys.argv[3])))
rows = a.fetchall()
b = db.execute("SELECT * FROM alerts WHERE raised_ms < ? AND (cleared_ms IS NULL OR cleared_ms >= ?)",
               (int(sys.argv[3]), int(sys.argv[2])))
rows += b.fetchall()
print(len(rows))
"""
)


def write_config(workdir: Path, buildings: int) -> Path:
    config = {
        "store": {"path": str(workdir / "firegrid.sqlite")},
        "influx": {"url": None},
        "buildings": [
            {"id": f"b{b:04d}", "name": f"东风街道 {b // 100 + 1}社区 {b % 100 + 1}号楼", "grid": f"g{b // 100:02d}"}
            for b in range(buildings)
        ],
        "devices": [
            {"id": f"b{b:04d}-{KINDS[d][:2]}-{d:02d}", "building": f"b{b:04d}", "kind": KINDS[d], "floor": 1}
            for b in range(buildings)
            for d in range(PER_BUILDING)
        ],
    }
    path = workdir / "firegrid.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def fill(db_path: Path, *, buildings: int, incidents: int, seed: int = 16) -> None:
    """A month of incidents with lifecycle timings, and device-health alerts, through the real schema."""
    from common.db import open_database

    rnd = random.Random(seed)
    db = open_database(db_path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("BEGIN")
    alert_id = 0
    for n in range(1, incidents + 1):
        b = rnd.randrange(buildings)
        building, grid = f"b{b:04d}", f"g{b // 100:02d}"
        device = f"{building}-sm-{rnd.randrange(15):02d}"
        raised = START + rnd.randrange(END - START - 3_600_000)
        drill = rnd.random() < 0.02
        ack = raised + rnd.randint(5, 240) * 1000
        dispatched = ack + rnd.randint(5, 60) * 1000
        on_scene = dispatched + rnd.randint(60, 300) * 1000
        resolved = on_scene + rnd.randint(60, 3000) * 1000
        cause = rnd.choice(("false_alarm", "false_alarm", "real_fire", "other", "test"))
        station = f"ms-{grid}"
        db.execute(
            "INSERT INTO incidents (id, building, grid, drill, code, severity, opened_ms, last_alert_ms, updated_ms,"
            " closed_ms, alert_count, open_count, state, station, cause)"
            " VALUES (?,?,?,?,?,4,?,?,?,?,1,0,'resolved',?,?)",
            (n, building, grid, int(drill), str(100000 + n), raised, raised, resolved, resolved, station, cause),
        )
        for ts, action, detail in (
            (dispatched, "dispatched", {"station": station, "members": ["王五"]}),
            (on_scene, "on_scene", {"via": "api"}),
            (resolved, "resolved", {"cause": cause}),
        ):
            db.execute(
                "INSERT INTO incident_events (incident_id, ts_ms, action, actor, by_name, detail) VALUES (?,?,?,?,?,?)",
                (n, ts, action, "micro-station", "王五", orjson.dumps(detail).decode()),
            )
        alert_id += 1
        db.execute(
            "INSERT INTO alerts (id, key, rule, severity, building, floor, device, grid, state, condition, open,"
            " drill, incident_id, ts_ms, raised_ms, updated_ms, cleared_ms, acknowledged_ms, acknowledged_by,"
            " dispatched_ms, dispatched_to, resolved_ms, resolved_by, cause) VALUES"
            " (?,?,'smoke-detector-alarm',4,?,1,?,?,'resolved','cleared',0,?,?,?,?,?,?,?,'micro-station',?,?,?,"
            "'micro-station',?)",
            (
                alert_id,
                f"k{alert_id}",
                building,
                device,
                grid,
                int(drill),
                n,
                raised,
                raised,
                resolved,
                raised + 60_000,
                ack,
                dispatched,
                station,
                resolved,
                cause,
            ),
        )
        for ts, action in ((raised, "raised"), (ack, "acknowledged"), (resolved, "resolved")):
            db.execute(
                "INSERT INTO audit (alert_id, ts_ms, action, by, detail) VALUES (?,?,?,?,?)",
                (alert_id, ts, action, "micro-station", "{}"),
            )
    # Device health: 2 % of devices offline for a while, 1 % with a fault repaired, 1 % of extinguishers missing.
    devices = [(b, d) for b in range(buildings) for d in range(PER_BUILDING)]
    for rule, share, severity in (
        ("device-absent", 0.02, 2),
        ("device-fault", 0.01, 2),
        ("extinguisher-missing", 0.01, 3),
    ):
        for b, d in rnd.sample(devices, int(len(devices) * share)):
            alert_id += 1
            n += 1
            building, grid = f"b{b:04d}", f"g{b // 100:02d}"
            raised = START + rnd.randrange(END - START - 86_400_000)
            cleared = None if rule == "extinguisher-missing" else raised + rnd.randint(600, 86_400) * 1000
            db.execute(
                "INSERT INTO incidents (id, building, grid, drill, code, severity, opened_ms, last_alert_ms,"
                " updated_ms, alert_count, open_count) VALUES (?,?,?,0,?,?,?,?,?,1,1)",
                (n, building, grid, str(100000 + n), severity, raised, raised, raised),
            )
            db.execute(
                "INSERT INTO alerts (id, key, rule, severity, building, floor, device, grid, state, condition, open,"
                " incident_id, ts_ms, raised_ms, updated_ms, cleared_ms) VALUES"
                " (?,?,?,?,?,1,?,?,'raised','active',1,?,?,?,?,?)",
                (
                    alert_id,
                    f"k{alert_id}",
                    rule,
                    severity,
                    building,
                    f"{building}-{KINDS[d][:2]}-{d:02d}",
                    grid,
                    n,
                    raised,
                    raised,
                    raised,
                    cleared,
                ),
            )
    db.execute("COMMIT")
    db.close()


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, the process's own VmHWM) of one process."""
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=TIMEOUT_S)
    seconds = time.perf_counter() - started
    err = result.stderr.decode(errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])} failed ({result.returncode}): {err[-2000:]}")
    peaks = [int(line.split()[1]) for line in err.splitlines() if line.startswith("VMHWM ")]
    return seconds, peaks[-1] / 1024 if peaks else float("nan")


def main(argv: list[str] | None = None) -> int:
    args = bench_parser("the monthly report of 2,000 buildings and 50,000 incidents").parse_args(argv)
    buildings, incidents = (200, 5_000) if args.quick else (2_000, 50_000)
    with tempfile.TemporaryDirectory(prefix="firegrid-bench-reports-") as tmp:
        workdir = Path(tmp)
        config = write_config(workdir, buildings)
        fill_started = time.perf_counter()
        fill(workdir / "firegrid.sqlite", buildings=buildings, incidents=incidents)
        fill_s = time.perf_counter() - fill_started
        db_mb = (workdir / "firegrid.sqlite").stat().st_size / 1_048_576
        base_s, base_mb = timed(
            [sys.executable, "-c", BASELINE, str(workdir / "firegrid.sqlite"), str(START), str(END)]
        )
        figures: list[Figure] = [
            Figure(
                name="reports.baseline_s",
                label="bare sqlite3 read of the month's rows (baseline)",
                value=round(base_s, 2),
                unit="s",
                better="lower",
            )
        ]
        for fmt in ("csv", "xlsx", "html", "pdf"):
            out = workdir / f"report.{fmt}"
            argv_ = [sys.executable, "-c", CLI, "report", "--config", str(config)]
            seconds, peak = timed([*argv_, "--month", "2026-11", "--out", str(out)])
            figures.append(
                Figure(
                    name=f"reports.{fmt}_s",
                    label=f"firegrid report → {fmt.upper()} ({out.stat().st_size / 1_048_576:.1f} MB)",
                    value=round(seconds, 2),
                    unit="s",
                    better="lower",
                    baseline=round(base_s, 2),
                    baseline_label="bare sqlite3 read of the month",
                )
            )
            figures.append(
                Figure(
                    name=f"reports.{fmt}_peak_rss_mb",
                    label=f"firegrid report → {fmt.upper()}, peak RSS",
                    value=round(peak),
                    unit="MB",
                    better="lower",
                    baseline=round(base_mb),
                    baseline_label="bare sqlite3 read of the month",
                )
            )
    emit(
        "reports",
        figures,
        as_json=args.json,
        quick=args.quick,
        notes=[
            f"{buildings} buildings, {buildings * PER_BUILDING} devices, {incidents} incidents"
            f" (+{int(buildings * PER_BUILDING * 0.04)} device-health alerts); store {db_mb:.0f} MB,"
            f" filled in {fill_s:.0f} s (not measured)",
            "each format is its own `firegrid report` process: wall time includes Python start-up and imports",
        ],
        conditions={"buildings": buildings, "devices": buildings * PER_BUILDING, "incidents": incidents},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
