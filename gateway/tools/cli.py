"""The ``firegrid`` command line.  Each subcommand lives in the package that owns it and is imported lazily, so
``firegrid check-config`` does not pay for the browser, the broker or the simulator.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple, Protocol, cast


class Command(Protocol):
    """What a subcommand's module provides."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load_command(module: str) -> Command:
    return cast(Command, importlib.import_module(module))  # a module satisfies the protocol; the checker cannot tell


class Subcommand(NamedTuple):
    name: str
    module: str
    help: str


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "check-config", "gateway.tools.check_config", "validate a config file; print every problem with its path"
    ),
    Subcommand(
        "run", "gateway.service.service", "run the gateway: MQTT ingest, rules, alerts, InfluxDB and the HTTP API"
    ),
    Subcommand(
        "console",
        "gateway.tools.console",
        "one city-wide API and dashboard over the shared store: every building, live, no MQTT or engine of its own",
    ),
    Subcommand("demo", "gateway.tools.demo", "a whole community live on this machine, no external services needed"),
    Subcommand("simulate", "simulators.cli", "simulate a community's devices and fire scenarios over MQTT"),
    Subcommand("replay", "gateway.tools.replay", "run recorded traffic through the rules and print the alert timeline"),
    Subcommand("verify", "simulators.verify", "drive a scenario against a live deployment and judge the alerts"),
    Subcommand("acl", "gateway.tools.acl", "generate Mosquitto password and ACL files from the device registry"),
    Subcommand("backup", "gateway.tools.backup", "a consistent copy of the store, safe while the gateway runs"),
    Subcommand("report", "gateway.tools.report", "the monthly report of a month as HTML, PDF, XLSX or CSV"),
    Subcommand("qr", "gateway.tools.qr", "print a PDF sheet of inspection points' QR codes for a building or grid"),
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module (if given) is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="firegrid",
        description="firegrid: fire-safety telemetry gateway and alerting for community micro fire stations.",
    )
    from gateway import __version__

    parser.add_argument("--version", action="version", version=f"firegrid {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for sub in SUBCOMMANDS:
        sub_parser = subparsers.add_parser(sub.name, help=sub.help, description=sub.help)
        sub_parser.set_defaults(_module=sub.module)
        if sub.name != command:
            continue
        _load_command(sub.module).add_arguments(sub_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(_load_command(args._module).run(args) or 0)
    except SystemExit as exc:  # a command that cannot start (gateway.config.load_or_exit) exits as argparse does
        if isinstance(exc.code, int):
            return exc.code
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
