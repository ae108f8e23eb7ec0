"""Schema versions of the store: an ordered list of migrations, tracked in ``PRAGMA user_version`` on SQLite and in
the one-row table ``schema_version`` on PostgreSQL (:func:`common.pg.migrate_postgres`).

A migration is a version number and either an SQL script or a function of the connection.  ``migrate`` applies the
ones above the file's ``user_version`` in order, each in ONE transaction together with its version bump, so a
migration that fails half-way leaves the file exactly at the version before it (DDL is transactional in SQLite,
and so is ``user_version``: it lives in the database header, which the transaction writes).

A file written by a newer release is refused rather than opened: this code cannot know what the newer columns and
tables mean, and writing rows without them could break the newer release when it opens the file again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.db import Connection


class SchemaError(Exception):
    """Base class of the schema's errors."""


class SchemaTooNew(SchemaError):
    """The file was written by a newer release: its schema version is above every migration this code knows."""

    def __init__(self, *, path: str, found: int, known: int) -> None:
        super().__init__(
            f"{path}: schema version {found} was written by a newer firegrid; this one knows up to version {known}"
            " (run the newer firegrid again, or restore a backup of the store made before it upgraded the file)"
        )
        self.found = found
        self.known = known


class MigrationFailed(SchemaError):
    """A migration raised; its transaction was rolled back and the file is still at ``from_version``."""

    def __init__(self, *, path: str, migration: Migration, from_version: int, error: BaseException) -> None:
        super().__init__(
            f"{path}: migration {migration.version} ({migration.name}) failed, the store stays at schema version"
            f" {from_version}: {error}"
        )
        self.version = migration.version
        self.from_version = from_version


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """One schema step.  ``apply`` is an SQL script (statements separated by ``;``) or a function that changes the
    schema through the connection it is given; either runs inside the migration's transaction and must not commit.
    ``postgres``: the same step for a PostgreSQL store (same version number, same meaning); a list of migrations
    with a step that has none cannot open a PostgreSQL store."""

    version: int
    name: str
    apply: str | Callable[[sqlite3.Connection], None]
    postgres: str | Callable[[Connection], None] | None = None


def latest_version(migrations: Sequence[Migration]) -> int:
    """The version a file has after ``migrations``; checks that they are numbered 1, 2, 3... in order (a gap or a
    duplicate would make two releases disagree on what a version number means)."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(f"migration {migration.name!r} has version {migration.version}, expected {expected}")
    return len(migrations)


def user_version(db: sqlite3.Connection) -> int:
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration], *, path: str) -> int:
    """Bring the file behind ``db`` (an autocommit connection) to the latest version; returns that version.

    Safe when several connections open the file at once: the version is read again under the write lock
    (``BEGIN IMMEDIATE``), so a migration another connection has just applied is not applied twice."""
    latest = latest_version(migrations)
    version = user_version(db)
    while True:
        if version > latest:
            raise SchemaTooNew(path=path, found=version, known=latest)
        if version == latest:
            return version
        migration: Migration | None = None
        db.execute("BEGIN IMMEDIATE")
        try:
            version = user_version(db)
            if version >= latest:  # another connection migrated the file meanwhile
                db.execute("ROLLBACK")
                continue
            migration = migrations[version]  # versions are 1..n: the one after `version` sits at index `version`
            _run(db, migration)
            # An f-string because PRAGMA takes no parameters; the value is an int from our own list.
            db.execute(f"PRAGMA user_version = {int(migration.version)}")
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if migration is None or not isinstance(exc, Exception):
                raise
            raise MigrationFailed(path=path, migration=migration, from_version=version, error=exc) from exc
        version = migration.version


def _run(db: sqlite3.Connection, migration: Migration) -> None:
    if callable(migration.apply):
        migration.apply(db)
        return
    # Statement by statement: ``executescript`` would COMMIT the migration's transaction before it starts.
    for statement in statements(migration.apply):
        db.execute(statement)


def statements(script: str) -> list[str]:
    """Split an SQL script into its statements.  ``sqlite3.complete_statement`` decides where one ends, so a
    ``;`` inside a string literal, a comment or a trigger body does not cut a statement in two."""
    out: list[str] = []
    pending = ""
    *pieces, rest = script.split(";")
    for piece in pieces:
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                out.append(pending.strip())
            pending = ""
    pending += rest
    if pending.strip():
        raise ValueError(f"unterminated SQL statement: {pending.strip()[:80]!r}")
    return out
