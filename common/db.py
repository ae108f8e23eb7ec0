"""The one way to open the store: SQLite (a file, the default) or PostgreSQL (cluster mode), with its schema brought
to the current version, behind one small typed connection interface (:class:`Connection`, :class:`Cursor`) that both
backends satisfy, so mypy checks every owner's code against both.

SQLite: one pragma policy for every connection.

Every owner of the file (the alert store, presence, engine snapshots, the MQTT filter ledger, InfluxDB dead letters)
opens its own connection with ``open_database``; none of them creates tables any more.

The pragma policy, and why it is the same for every connection:

* ``journal_mode=WAL``: readers (the API, the dashboard, operators' read-only tools) never block the commit thread,
  and a commit is one append to the log.  The mode is stored in the file, but setting it on every open is what
  turns a file created elsewhere (a backup, a copy) into WAL before the first write.
* ``synchronous=FULL``: an alert transition and its outbox rows must be on disk before the gateway sends the MQTT
  PUBACK for the messages that caused them.  In WAL mode NORMAL syncs the log only at checkpoints: a process killed
  after its commit keeps the commit (the kernel holds the pages), but a power cut or a kernel crash could lose an
  alert the broker, already acknowledged, no longer holds.  The other owners commit about once a second or less
  and off the acknowledgement path, so FULL costs them nothing that matters; before, all of them but the dead
  letters asked for FULL, and those got it too as SQLite's default.
* a 30 s busy timeout: the owners' transactions are short, so a connection only waits behind another owner's
  commit, a checkpoint or an operator's backup.  Waiting is always better than failing with "database is locked":
  a failed group commit stops the gateway (by design: nothing may be acknowledged that is not durable), and a
  failed presence flush loses "last seen".  Before, the alert store gave up after 5 s, the dead letters after
  Python's default 5 s and the other gateway tables after 30 s; the longest keeps every one's guarantee.
* ``foreign_keys=ON``: no table declares a foreign key yet, so this costs nothing today; it means one added by a
  migration is enforced from the start instead of silently ignored (SQLite's default).
* autocommit (``isolation_level=None``): each owner writes ``BEGIN``/``COMMIT`` itself, so it alone decides what one
  transaction holds (the alert store: a whole engine batch with its outbox rows), and the migrations can run one
  transaction each.
* ``check_same_thread=False``: the owners are used from the event loop and from the commit thread, each behind its
  own lock.

PostgreSQL (``open_database("postgresql://...")``): :class:`common.pg.PgConnection` over a psycopg 3 connection in
autocommit mode, so that the owners' own ``BEGIN``/``COMMIT`` decide what one transaction holds, as on SQLite; the
server's ``synchronous_commit`` is left on (a commit is durable before the gateway acknowledges its messages).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, overload

from common.migrations import Migration, migrate
from common.pg import PG_ERRORS, open_postgres
from common.schema import MIGRATIONS

BUSY_TIMEOUT_S = 30.0

RowFactory = Callable[[sqlite3.Cursor, tuple[Any, ...]], Any]

Dialect = Literal["sqlite", "postgres"]

PG_SCHEMES = ("postgresql://", "postgres://")


# A row as the owners read it: by index, by name (``sqlite3.Row``, ``common.pg.Row``), as a sequence.  Dynamically
# typed, as the sqlite3 API's rows are: the record classes read their columns and convert them.
Row: TypeAlias = Any


class Cursor(Protocol):
    """What the owners use of a cursor; ``sqlite3.Cursor`` and :class:`common.pg.PgCursor` both are one.  Rows are
    ``Any`` as in the sqlite3 API: by index always, by name for an owner that asked for named rows (every
    PostgreSQL row answers both)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> Cursor: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What the owners use of a connection (autocommit: they write ``BEGIN``/``COMMIT`` themselves)."""

    @property
    def in_transaction(self) -> bool: ...

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> Cursor: ...

    def cursor(self) -> Cursor: ...

    def close(self) -> None: ...


def is_postgres_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(PG_SCHEMES)


def dialect_of(db: Connection) -> Dialect:
    return "sqlite" if isinstance(db, sqlite3.Connection) else "postgres"


# The exceptions either backend's driver raises (for an owner that must not fail on a store error).
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, *PG_ERRORS)


@overload
def open_database(
    target: Path,
    *,
    row_factory: RowFactory | None = None,
    migrations: Sequence[Migration] | None = None,
) -> sqlite3.Connection: ...


@overload
def open_database(
    target: str | Path,
    *,
    row_factory: RowFactory | None = None,
    migrations: Sequence[Migration] | None = None,
) -> Connection: ...


def open_database(
    target: str | Path,
    *,
    row_factory: RowFactory | None = None,
    migrations: Sequence[Migration] | None = None,
) -> Connection:
    """Open the store at ``target``, migrated to the latest version: a path (SQLite, created with its directory if
    need be) or a ``postgresql://`` URL.

    ``row_factory``: e.g. ``sqlite3.Row`` for an owner that reads columns by name (SQLite only; PostgreSQL rows
    always answer by name and by index).  ``migrations``: the schema's list, ``common.schema.MIGRATIONS``, unless
    given (tests pass their own).

    Raises ``common.migrations.SchemaTooNew`` for a store from a newer release, ``MigrationFailed`` when a
    migration raised (the store then stays at the version it had) and ``common.pg.StoreUnreachable`` when the
    PostgreSQL server cannot be reached."""
    if is_postgres_url(target):
        return open_postgres(str(target), migrations=MIGRATIONS if migrations is None else migrations)
    return open_sqlite(target, row_factory=row_factory, migrations=migrations)


def open_sqlite(
    path: str | Path,
    *,
    row_factory: RowFactory | None = None,
    migrations: Sequence[Migration] | None = None,
) -> sqlite3.Connection:
    """``open_database`` for a file, typed as the sqlite3 connection itself: for the owners that stay local per
    machine even in cluster mode (the MQTT filter ledger, InfluxDB's dead letters) and SQLite-only tools."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    try:
        _set_wal(db)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(db, MIGRATIONS if migrations is None else migrations, path=str(path))
    except BaseException:
        db.close()
        raise
    if row_factory is not None:
        db.row_factory = row_factory
    return db


def _set_wal(db: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, waiting out another connection that is converting the same new file: the
    conversion takes an exclusive lock and SQLite answers "database is locked" at once instead of calling the busy
    handler.  (A file already in WAL mode converts nothing, so this only ever waits on a brand-new file.)"""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                raise
            time.sleep(0.005)
