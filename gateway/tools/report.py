"""``firegrid report --config FILE --month 2026-11 [--grid G] [--lang zh|en] --out report.{html,pdf,xlsx,csv}``:
the monthly report of a month, from the store the config names (safe while the gateway runs: it only reads).
The format is the extension of ``--out``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from alerts.reports.monthly import FORMATS
from alerts.reports.render import ReportError, render
from alerts.store import AlertStore
from gateway.api.routes.reports import monthly_report
from gateway.config import load_or_exit


def _month(value: str) -> str:
    if not re.fullmatch(r"2\d{3}-(0[1-9]|1[0-2])", value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a month like 2026-11")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the gateway's YAML config")
    parser.add_argument("--month", required=True, type=_month, help="the calendar month, e.g. 2026-11")
    parser.add_argument("--grid", help="one grid only (default: every grid)")
    parser.add_argument("--lang", choices=("zh", "en"), default="zh", help="Chinese (default) or English")
    parser.add_argument("--out", required=True, help="report.html, report.pdf, report.xlsx or report.csv")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = out.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        print(f"firegrid report: --out must end in .{', .'.join(FORMATS)}, not {out.name!r}", file=sys.stderr)
        return 2
    config = load_or_exit(args.config)
    if args.grid is not None and args.grid not in {b.grid for b in config.buildings}:
        print(f"firegrid report: no grid {args.grid!r} in {args.config}", file=sys.stderr)
        return 2
    store = AlertStore.from_config(config)
    try:
        started = time.monotonic()
        report = monthly_report(
            config,
            store,
            month=args.month,
            grid=args.grid,
            buildings=None,
            lang=args.lang,
            now_ms=time.time_ns() // 1_000_000,
        )
        body = render(report, fmt)
    except ReportError as exc:
        print(f"firegrid report: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(body)
    print(
        f"wrote {out} ({len(body)} bytes): {report.response.incidents} incidents,"
        f" {report.false_alarms.false_alarms} false alarms, {report.devices.devices} devices,"
        f" in {time.monotonic() - started:.1f} s"
    )
    return 0
