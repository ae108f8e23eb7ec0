"""The PostgreSQL store (cluster mode): a thin adapter that gives a psycopg 3 connection the subset of the sqlite3 API
the store's owners use (:class:`common.db.Connection`), and the schema's migrations on PostgreSQL.

What the adapter does, and why it does so little:

* The SQL the owners write is portable (``ON CONFLICT`` instead of ``INSERT OR REPLACE``, ``RETURNING id`` instead
  of ``lastrowid``, ``CASE`` instead of two-argument ``MAX``): the adapter rewrites nothing but the placeholder.
* ``?`` -> ``%s``: both drivers take positional parameters, spelled differently.  Translating the one placeholder
  (outside string literals, quoted names and comments) keeps a single text of every statement, instead of two
  copies that drift apart.  psycopg reads ``%`` as the start of a placeholder anywhere in the text, literals
  included, so a literal ``%`` (``LIKE 'a%'``) is doubled.  A statement run without parameters is sent untouched
  (psycopg then does not parse it), so DDL and ``BEGIN`` pass as written.
* Rows answer by index and by name (:class:`Row`), like ``sqlite3.Row``, whatever the owner asked for.
* A ``bool`` parameter is sent as 0/1, as SQLite stores it (the flags are integer columns on both).
* Not understood by the placeholder scan: ``/* */`` comments and dollar-quoted strings (no owner writes them).
* Autocommit: the owners write ``BEGIN``/``COMMIT``/``ROLLBACK`` themselves, as on SQLite, so one of them alone
  decides what a transaction holds (the alert store: a whole engine batch with its outbox rows and the engine
  snapshots).  ``synchronous_commit`` keeps the server's default (on): a ``COMMIT`` that returned is durable, which
  is what lets the gateway acknowledge the MQTT messages behind it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import RowMaker

from common.migrations import Migration, MigrationFailed, SchemaTooNew, latest_version, statements

PG_ERRORS: tuple[type[Exception], ...] = (psycopg.Error,)

CONNECT_TIMEOUT_S = 10

# The advisory lock every migration transaction takes (an arbitrary constant: "firegrid" in ASCII, truncated), so
# several gateways starting at once migrate the store once, one after the other.
MIGRATION_LOCK = 0x6669726567726964

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    version BIGINT NOT NULL
)
"""


class StoreUnreachable(Exception):
    """The PostgreSQL server could not be reached (or refused us): the store cannot be opened."""


class Row:
    """A row by index (``row[0]``), by name (``row["id"]``) and as a sequence (unpacking, ``len``), like
    ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = tuple(values)
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        if isinstance(other, tuple):
            return self._values == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        return f"Row{self._values!r}"

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    index: dict[str, int] = {}
    for i, column in enumerate(cursor.description or ()):
        index.setdefault(column.name, i)  # the first of two equal names, as sqlite3.Row

    def make(values: Sequence[Any]) -> Row:
        return Row(values, index)

    return make


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """``?`` -> ``%s`` and ``%`` -> ``%%`` outside quoted text and comments (``%`` inside literals too: psycopg
    parses the whole text).  Cached: the owners run the same few hundred statements over and over."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c in "'\"":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:  # a doubled quote inside the literal
                        j += 2
                        continue
                    break
                j += 1
            out.append(sql[i : j + 1].replace("%", "%%"))
            i = j + 1
        elif c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            j = n if j < 0 else j
            out.append(sql[i:j].replace("%", "%%"))
            i = j
        elif c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _params(values: Sequence[Any]) -> tuple[Any, ...]:
    # A flag is an integer column (the schema is SQLite's, which has no boolean type): a Python bool would reach
    # PostgreSQL as a boolean and be refused for a BIGINT column, where SQLite stores it as 0/1.
    return tuple(int(v) if isinstance(v, bool) else v for v in values)


class PgCursor:
    """A :class:`common.db.Cursor` over a psycopg cursor."""

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cur = cursor

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    @property
    def raw(self) -> psycopg.Cursor[Row]:
        """The psycopg cursor itself, for SQL written in psycopg's own placeholders (``%s``, ``%(name)s``) that
        must run inside this cursor's transaction (cluster mode's lease fence)."""
        return self._cur

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        if parameters:
            self._cur.execute(translate(sql), _params(parameters))
        else:
            self._cur.execute(sql.encode())  # bytes: psycopg sends it as written, no placeholder parsing
        return self

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> PgCursor:
        rows = [_params(p) for p in seq_of_parameters]
        if rows:
            self._cur.executemany(translate(sql), rows)
        return self

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cur.fetchall())

    def close(self) -> None:
        self._cur.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._cur.fetchall())


class PgConnection:
    """A :class:`common.db.Connection` over one psycopg connection in autocommit mode.  Used as the owners use a
    SQLite connection: each behind its own lock (psycopg serializes the statements of one connection as well)."""

    def __init__(self, conn: psycopg.Connection[Row], *, url: str) -> None:
        self._conn = conn
        self.url = url

    @property
    def in_transaction(self) -> bool:
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    def cursor(self) -> PgCursor:
        return PgCursor(self._conn.cursor())

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Sequence[Sequence[Any]], /) -> PgCursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def close(self) -> None:
        self._conn.close()


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def connect(url: str) -> PgConnection:
    """A connection to ``url`` (autocommit), or :class:`StoreUnreachable` with the server's reason."""
    try:
        conn = psycopg.connect(url, autocommit=True, row_factory=_row_factory, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.Error as exc:
        raise StoreUnreachable(f"cannot connect to the PostgreSQL store {redact(url)}: {exc}".strip()) from exc
    return PgConnection(conn, url=url)


def open_postgres(url: str, *, migrations: Sequence[Migration]) -> PgConnection:
    """``common.db.open_database`` for a PostgreSQL URL: connected and migrated."""
    db = connect(url)
    try:
        migrate_postgres(db, migrations, url=url)
    except BaseException:
        db.close()
        raise
    return db


def schema_version(db: PgConnection) -> int:
    """The store's schema version (0: no schema yet)."""
    row = db.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    found = db.execute("SELECT version FROM schema_version").fetchone()
    return 0 if found is None else int(found[0])


def migrate_postgres(db: PgConnection, migrations: Sequence[Migration], *, url: str) -> int:
    """Bring the store to the latest version, one transaction per migration (DDL is transactional on PostgreSQL
    too), each with its version bump.  Every transaction takes :data:`MIGRATION_LOCK` (``pg_advisory_xact_lock``,
    released at its end) and reads the version under it: of several gateways starting at once one migrates and the
    others find the work done."""
    latest = latest_version(migrations)
    where = redact(url)
    while True:
        migration: Migration | None = None
        version = 0
        db.execute("BEGIN")
        try:
            db.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))
            db.execute(VERSION_TABLE)
            db.execute("INSERT INTO schema_version (one, version) VALUES (TRUE, 0) ON CONFLICT (one) DO NOTHING")
            version = int(db.execute("SELECT version FROM schema_version").fetchone()[0])
            if version > latest:
                raise SchemaTooNew(path=where, found=version, known=latest)
            if version == latest:
                db.execute("COMMIT")
                return version
            migration = migrations[version]  # versions are 1..n: the one after `version` sits at index `version`
            _run(db, migration)
            db.execute("UPDATE schema_version SET version = ?", (migration.version,))
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            if migration is None or not isinstance(exc, Exception):
                raise
            raise MigrationFailed(path=where, migration=migration, from_version=version, error=exc) from exc


def _run(db: PgConnection, migration: Migration) -> None:
    step = migration.postgres
    if step is None:
        raise ValueError(f"migration {migration.version} ({migration.name}) has no PostgreSQL form")
    if callable(step):
        step(db)
        return
    for statement in statements(step):
        db.execute(statement)
