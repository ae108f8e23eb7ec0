"""``make bench``: run every benchmark in bench/, three times each, and write the figures into docs/performance.md.

Each bench is run as its own process (``python -m bench.NAME --json``) so one that crashes or hangs cannot take the
others with it, and so memory figures are not polluted by the previous bench.  Every figure is reported as the median
of the runs with min–max.  Only the block between ``<!-- figures:start -->`` and ``<!-- figures:end -->`` of the doc is
rewritten; the prose around it belongs to the people who wrote it.

    python -m bench.run                  # all benches, 3 runs each, rewrites docs/performance.md
    python -m bench.run --quick          # smoke: 1 quick run each (figures marked as quick)
    python -m bench.run --only latency --only peer_nodered --runs 1 --no-doc
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
DOC = ROOT / "docs" / "performance.md"
START = "<!-- figures:start -->"
END = "<!-- figures:end -->"
NOT_BENCHES = {"__init__", "run", "common"}
# Run order: cheap, CPU-only benches first; the peer last (it installs Node-RED on first use).
ORDER = ["rules", "ingest", "paths", "alerts", "latency", "backlog", "scale", "cluster", "simulate", "peer_nodered"]
# Runs and timeouts the runner imposes in full mode, over what a bench declares, to keep make bench in budget.
OVERRIDES: dict[str, dict[str, Any]] = {
    "simulate": {"runs": 1},  # a generator-rate check, not a firegrid figure
}
# Benches that do not belong in make bench's 15 minutes; they still run with --only NAME.
EXCLUDED: dict[str, str] = {
    "soak": "a 10-minute soak under faults; run it on its own: python -m bench.soak",
    "cluster": "three cluster starts and backlogs, about 4 minutes; run it on its own: python -m bench.cluster",
}
TOTAL_BUDGET_S = 14 * 60  # `make bench` must end within 15 minutes on 2 cores
DEFAULT_TIMEOUT_S = {False: 240, True: 120}  # per run, by quick

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class BenchOutcome:
    name: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    attempts: int = 0
    quick: bool = False
    skipped: str | None = None
    short: str | None = None  # fewer runs than wanted, and why


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    names = sorted(p.stem for p in bench_dir.glob("*.py") if p.stem not in NOT_BENCHES and not p.stem.startswith("_"))
    ranked = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    return ranked


def parse_result(stdout: str) -> dict[str, Any] | None:
    """The last JSON object on stdout.  A bench that prints a flat JSON object of numbers instead of the
    ``{"figures": [...]}`` protocol still counts: each numeric key becomes a figure."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if not isinstance(value, dict):
            continue
        if isinstance(value.get("figures"), list):
            return value
        figures = [
            {"name": str(k), "value": float(v), "unit": "", "label": str(k)}
            for k, v in value.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if figures:
            return {"figures": figures, "notes": ["(flat JSON output)"], "conditions": {}}
    return None


def run_once(name: str, *, quick: bool, timeout: float) -> tuple[dict[str, Any] | None, str | None]:
    """One run of one bench in its own process: (its JSON result or None, an error or None)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    flags = ["--json"] + (["--quick"] if quick else [])
    started = time.monotonic()
    for attempt in range(2):
        argv = [sys.executable, "-m", f"bench.{name}", *flags]
        try:
            done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            return parse_result(out), f"timed out after {timeout:.0f}s"
        if (
            attempt == 0
            and done.returncode != 0
            and "unrecognized arguments" in done.stderr
            and "--json" in done.stderr
        ):
            # A bench that does not speak the protocol yet: run it plainly and keep its own summary as a note.
            flags = [f for f in flags if f != "--json"]
            timeout = max(10.0, timeout - (time.monotonic() - started))
            continue
        result = parse_result(done.stdout) if "--json" in flags else None
        if result is None and done.returncode == 0:
            summary = [line.strip() for line in done.stdout.strip().splitlines() if line.strip()][-4:]
            result = {"figures": [], "notes": ["no --json output; its own summary: " + " / ".join(summary)]}
        if done.returncode != 0 or result is None:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
            return result, f"exit {done.returncode}: {tail}"
        return result, None
    return None, "unreachable"


def median(values: list[float]) -> float:
    clean = sorted(v for v in values if v is not None and not math.isnan(v))
    if not clean:
        return math.nan
    mid = len(clean) // 2
    return clean[mid] if len(clean) % 2 else (clean[mid - 1] + clean[mid]) / 2


@dataclass
class Row:
    bench: str
    name: str
    label: str
    unit: str
    values: list[float]
    baselines: list[float]
    baseline_label: str | None
    goal: str | None
    goal_on: str
    goal_min: float | None
    goal_max: float | None
    better: str = "higher"

    @property
    def med(self) -> float:
        return median(self.values)

    @property
    def lo(self) -> float:
        clean = [v for v in self.values if not math.isnan(v)]
        return min(clean) if clean else math.nan

    @property
    def hi(self) -> float:
        clean = [v for v in self.values if not math.isnan(v)]
        return max(clean) if clean else math.nan

    @property
    def baseline(self) -> float | None:
        value = median(self.baselines)
        return None if math.isnan(value) else value

    @property
    def ratio(self) -> float | None:
        # Median of the per-run ratios: each ratio compares numbers from the same run, which is the point.
        ratios = [
            v / b
            for v, b in zip(self.values, self.baselines, strict=False)
            if b and not math.isnan(v) and not math.isnan(b)
        ]
        return median(ratios) if ratios else None

    @property
    def met(self) -> bool | None:
        from bench.common import goal_met

        return goal_met(
            value=self.med,
            ratio=self.ratio,
            goal_on=self.goal_on,
            goal_min=self.goal_min,
            goal_max=self.goal_max,
            baseline=self.baseline,
            better=self.better,
        )


def aggregate(outcomes: list[BenchOutcome]) -> list[Row]:
    rows: dict[tuple[str, str], Row] = {}
    all_quick = all(
        o.quick for o in outcomes if not o.skipped
    )  # a quick run says so once, at the top; a mixed run says it per bench
    for outcome in outcomes:
        for run in outcome.runs:
            for fig in run.get("figures", []):
                try:
                    value = float(fig["value"]) if fig.get("value") is not None else math.nan
                except (TypeError, ValueError):
                    value = math.nan
                key = (outcome.name, str(fig.get("name")))
                row = rows.get(key)
                if row is None:
                    row = rows[key] = Row(
                        bench=outcome.name + (" (quick)" if outcome.quick and not all_quick else ""),
                        name=str(fig.get("name")),
                        label=str(fig.get("label") or fig.get("name")),
                        unit=str(fig.get("unit") or ""),
                        values=[],
                        baselines=[],
                        baseline_label=fig.get("baseline_label"),
                        goal=fig.get("goal"),
                        goal_on=str(fig.get("goal_on") or "value"),
                        goal_min=fig.get("goal_min"),
                        goal_max=fig.get("goal_max"),
                        better=str(fig.get("better") or "higher"),
                    )
                row.values.append(value)
                # One baseline per value (NaN when a run had none), so values and baselines stay paired by run.
                row.baselines.append(float(fig["baseline"]) if fig.get("baseline") is not None else math.nan)
    return list(rows.values())


def fmt(value: float | None) -> str:
    from bench.common import fmt_number

    return fmt_number(value)


def render_table(rows: list[Row], *, markdown: bool) -> str:
    header = ["bench", "figure", "median", "min–max", "unit", "baseline", "ratio", "goal", "met"]
    lines: list[list[str]] = []
    for r in rows:
        n = len([v for v in r.values if not math.isnan(v)])
        spread = f"{fmt(r.lo)}–{fmt(r.hi)}" if n > 1 else "(1 run)" if n == 1 else "-"
        baseline = f"{fmt(r.baseline)} {r.baseline_label or ''}".strip() if r.baseline is not None else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = {True: "yes", False: "**no**" if markdown else "NO", None: ""}[r.met]
        lines.append([r.bench, r.label, fmt(r.med), spread, r.unit, baseline, ratio, r.goal or "", met])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    return "\n".join(out)


PEER_BENCH = "peer_nodered"
PEER_TITLE = (
    "**Side by side with Node-RED 5** (`bench/peer_nodered.py`: same broker settings, InfluxDB, community and load, "
    "one system after the other in the same run):"
)


def render_peer_table(rows: list[Row], *, firegrid_pending: bool = False) -> str:
    """The peer comparison as two columns: firegrid (each row's baseline) and Node-RED (its value)."""
    out = [
        "| measure | firegrid | Node-RED | Node-RED / firegrid | firegrid ahead |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        label = r.label.removeprefix("Node-RED vs firegrid: ")
        n = len([v for v in r.values if not math.isnan(v)])
        nodered = fmt(r.med) + (f" ({fmt(r.lo)}–{fmt(r.hi)})" if n > 1 else "")
        firegrid = fmt(r.baseline) if r.baseline is not None else "pending" if firegrid_pending else "-"
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        met = {True: "yes", False: "**no**", None: ""}[r.met]
        out.append(f"| {label} | {firegrid} {r.unit} | {nodered} {r.unit} | {ratio} | {met} |".replace("  ", " "))
    return "\n".join(out)


def render_block(
    outcomes: list[BenchOutcome],
    rows: list[Row],
    *,
    command: str,
    quick: bool,
    when: dt.datetime,
    machine: dict[str, Any],
) -> str:
    runs = sorted({len(o.runs) for o in outcomes if o.runs})
    peer_rows = [r for r in rows if r.bench.startswith(PEER_BENCH)]
    main_rows = [r for r in rows if not r.bench.startswith(PEER_BENCH)]
    ran = [o for o in outcomes if not o.skipped]
    quick = quick or (bool(ran) and all(o.quick for o in ran))
    mode = "QUICK MODE: smoke-sized runs, indicative only" if quick else "full mode"
    if not quick and any(o.quick for o in ran):
        mode += "; benches marked (quick) ran their quick mode to fit the time budget"
    lines = [
        f"Measured {when:%Y-%m-%d %H:%M} UTC with `{command}` ({mode}).",
        f"Machine: {machine['nproc']} cores ({machine['cpu']}), {machine['ram_gib']} GiB RAM, "
        f"Python {machine['python']}.",
        "Each figure is the median of "
        + ("/".join(str(n) for n in runs) if runs else "0")
        + " run(s) with min–max; a ratio compares numbers measured in the same run.",
        "",
        render_table(main_rows, markdown=True) if main_rows else "_No figures were measured._",
    ]
    if peer_rows:
        pending = any(
            run.get("conditions", {}).get("firegrid") == "pending"
            for o in outcomes
            if o.name == PEER_BENCH
            for run in o.runs
        )
        lines += ["", PEER_TITLE, "", render_peer_table(peer_rows, firegrid_pending=pending)]
    notes: list[str] = []
    for o in outcomes:
        if o.skipped:
            notes.append(f"- `{o.name}`: skipped — {o.skipped}")
        if o.short:
            notes.append(f"- `{o.name}`: {o.short}")
        for err in dict.fromkeys(o.errors):
            first = err.splitlines()[0] if err else ""
            notes.append(f"- `{o.name}`: a run failed — {first}")
        seen: set[str] = set()
        for run in o.runs:
            for note in run.get("notes", []):
                if note not in seen:
                    seen.add(note)
                    notes.append(f"- `{o.name}`: {note}")
        conditions = next((run.get("conditions") for run in o.runs if run.get("conditions")), None)
        if conditions:
            notes.append(f"- `{o.name}` conditions: " + ", ".join(f"{k}={v}" for k, v in conditions.items()))
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines)


def rewrite_doc(path: Path, block: str) -> None:
    """Replace what is between the figure markers (creating the doc or the markers when missing)."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Performance\n"
    new = f"{START}\n{block.rstrip()}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: new, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Figures\n\n" + new + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")


def bench_settings(name: str, *, quick: bool) -> tuple[int | None, float]:
    """A bench module may declare ``RUNS`` (e.g. 1 for a long one) and ``TIMEOUT_S``; read without running it."""
    source = (BENCH_DIR / f"{name}.py").read_text(encoding="utf-8", errors="replace")
    runs = re.search(r"^RUNS\s*(?::\s*int\s*)?=\s*(\d+)", source, re.M)
    timeout = re.search(r"^TIMEOUT_S\s*(?::\s*\w+\s*)?=\s*([\d_.]+)", source, re.M)
    return (
        int(runs.group(1)) if runs else None,
        float(timeout.group(1).replace("_", "")) if timeout and not quick else DEFAULT_TIMEOUT_S[quick],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one quick run of each bench")
    parser.add_argument("--runs", type=int, default=None, help="runs per bench (default 3, quick 1)")
    parser.add_argument("--only", action="append", default=[], help="run only this bench (repeatable)")
    parser.add_argument("--skip", action="append", default=[], help="skip this bench (repeatable)")
    parser.add_argument(
        "--quick-for", action="append", default=[], help="run this bench in quick mode within a full run (repeatable)"
    )
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    parser.add_argument("--doc", type=Path, default=DOC)
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="stop starting runs after this")
    args = parser.parse_args(argv)

    from bench.common import machine_info

    names = [n for n in discover() if (not args.only or n in args.only) and n not in args.skip]
    excluded = [n for n in names if n in EXCLUDED and n not in args.only]
    names = [n for n in names if n not in excluded]
    default_runs = args.runs or (1 if args.quick else 3)
    started = time.monotonic()
    outcomes: list[BenchOutcome] = []
    wanted: dict[str, tuple[int, float]] = {}
    for name in names:
        outcomes.append(BenchOutcome(name))
        quick = args.quick or name in args.quick_for
        outcomes[-1].quick = quick
        declared_runs, timeout = bench_settings(name, quick=quick)
        if not args.quick and name in OVERRIDES:
            declared_runs = OVERRIDES[name].get("runs", declared_runs)
            timeout = OVERRIDES[name].get("timeout_s", timeout)
        wanted[name] = (args.runs or (1 if args.quick else min(default_runs, declared_runs or default_runs)), timeout)

    def attempt(outcome: BenchOutcome, i: int) -> None:
        runs, timeout = wanted[outcome.name]
        left = args.budget_s - (time.monotonic() - started)
        print(f"[bench] {outcome.name} run {i}/{runs} ...", flush=True)
        t0 = time.monotonic()
        result, error = run_once(outcome.name, quick=outcome.quick, timeout=max(10.0, min(timeout, left)))
        outcome.seconds += time.monotonic() - t0
        outcome.attempts += 1
        if result is not None:
            outcome.runs.append(result)
        if error is not None:
            outcome.errors.append(error)
            print(f"[bench] {outcome.name}: {error}", flush=True)

    # Pass 1: one run of every bench, so each has its figures even when the budget is tight.
    for outcome in outcomes:
        if args.budget_s - (time.monotonic() - started) < 20:
            outcome.skipped = f"not run: the {args.budget_s:.0f} s budget of make bench was spent"
            continue
        attempt(outcome, 1)
    # Pass 2: the repeats, quickest benches first, as long as the next run is expected to fit in the budget.
    for outcome in sorted(outcomes, key=lambda o: o.seconds):
        runs, _timeout = wanted[outcome.name]
        if not outcome.runs or not outcome.runs[0].get("figures"):
            continue  # the first run measured nothing (e.g. firegrid run pending): another would not either
        for i in range(2, runs + 1):
            estimate = outcome.seconds / max(1, outcome.attempts)
            if estimate * 1.15 + 5 > args.budget_s - (time.monotonic() - started):
                outcome.short = (
                    f"{len(outcome.runs)} of {runs} runs: another would not fit in the {args.budget_s:.0f} s budget"
                )
                break
            attempt(outcome, i)

    for name in excluded:
        outcomes.append(BenchOutcome(name, skipped=EXCLUDED[name]))
    rows = aggregate(outcomes)
    print()
    print(render_table(rows, markdown=False))
    for o in outcomes:
        print(
            f"[bench] {o.name}: {len(o.runs)} run(s) in {o.seconds:.0f}s"
            + (f", {len(o.errors)} error(s)" if o.errors else "")
        )
    total = time.monotonic() - started
    print(f"[bench] total {total:.0f}s")

    if not args.no_doc:
        given = sys.argv[1:] if argv is None else argv
        command = "python -m bench.run " + " ".join(given) if given else "make bench (python -m bench.run)"
        block = render_block(
            outcomes,
            rows,
            command=command.strip(),
            quick=args.quick,
            when=dt.datetime.now(dt.UTC),
            machine=machine_info(),
        )
        rewrite_doc(args.doc, block)
        print(f"[bench] figures written to {args.doc}")
    return 0 if all(o.runs for o in outcomes if not o.skipped) else 1


if __name__ == "__main__":
    raise SystemExit(main())
