"""``firegrid backup --config FILE --out FILE``: a consistent copy of the store while the gateway runs.

SQLite's online backup API (``sqlite3.Connection.backup``) copies the database as one read transaction: in WAL
mode the gateway keeps committing meanwhile (readers never block the writer), and the copy is the store exactly as
it was when the backup began — every alert committed before it, none half-written.  The copy is written next to
``--out`` under a temporary name, switched to a self-contained rollback journal (no ``-wal`` file to forget),
checked (``PRAGMA integrity_check``) and only then renamed into place, so ``--out`` is never a partial file.

Restoring is docs/reports.md, "Backup and restore".
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from common.migrations import user_version
from common.pg import redact
from gateway.config import load_or_exit


class BackupFailed(Exception):
    """The copy could not be made or did not check out; ``--out`` was left as it was."""


@dataclass(frozen=True, slots=True)
class BackupResult:
    path: Path
    bytes: int
    schema_version: int
    alerts: int
    last_alert_id: int | None
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the gateway's YAML config (its store.path is copied)")
    parser.add_argument("--out", required=True, help="the backup file to write (replaced if it exists)")


def backup(source: Path, out: Path) -> BackupResult:
    """Copy ``source`` to ``out`` consistently; raises :class:`BackupFailed`."""
    if not source.exists():
        raise BackupFailed(f"{source}: no store there (is store.path right?)")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        # A plain connection: it must not migrate the file (the running gateway owns its schema).
        src = sqlite3.connect(source, timeout=30.0)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # all pages in one step: one read transaction, one consistent snapshot
                dst.execute("PRAGMA journal_mode=DELETE")
                check = dst.execute("PRAGMA integrity_check").fetchone()[0]
                if check != "ok":
                    raise BackupFailed(f"the copy failed its integrity check: {check}")
                alerts, last = dst.execute("SELECT count(*), max(id) FROM alerts").fetchone()
                version = user_version(dst)
            finally:
                dst.close()
        finally:
            src.close()
        os.replace(partial, out)
    except sqlite3.Error as exc:
        raise BackupFailed(f"{source}: {exc}") from exc
    finally:
        if partial.exists():
            partial.unlink()
    return BackupResult(out, out.stat().st_size, version, alerts, last, time.monotonic() - started)


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    if config.store.url:
        # The shared store is PostgreSQL's to copy: its own tool takes a consistent snapshot of a live database.
        print(
            "firegrid backup: store.url names a PostgreSQL store; back it up with pg_dump (e.g. pg_dump -Fc -f"
            f" firegrid.dump {redact(config.store.url)}). This command copies SQLite stores only.",
            file=sys.stderr,
        )
        return 2
    source = config.resolve_path(config.store.path)
    try:
        result = backup(source, Path(args.out))
    except BackupFailed as exc:
        print(f"firegrid backup: {exc}", file=sys.stderr)
        return 1
    print(
        f"backed up {source} to {result.path}: {result.bytes} bytes, schema version {result.schema_version},"
        f" {result.alerts} alerts (last id {result.last_alert_id}), in {result.seconds:.2f} s"
    )
    return 0
