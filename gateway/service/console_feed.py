"""What keeps ``firegrid console`` live without a side channel: it follows the shared store.

* :class:`ChangeFeed` reads the store's change log (``change_log``, written by the store in the transaction of every
  alert and incident change, ``alerts.store.core``) after the last id it saw and hands each row on.  On SQLite it
  polls every ``poll_s`` (a read of the rows after an id, by primary key); on PostgreSQL it waits on
  ``LISTEN firegrid_changes`` (the store's transaction runs ``NOTIFY firegrid_changes``, delivered only on commit)
  and polls only as a safety net.
* On PostgreSQL, ids come from a sequence taken when a row is written, and transactions commit in any order: a row
  with a lower id can become visible after one with a higher id was read.  So every read there also re-reads an
  overlap window (the last ``overlap_ids`` ids and the last ``overlap_ms`` of change time) and skips the ids
  already handed on.  On SQLite one writer at a time commits, so ids become visible in order and no overlap is read.
* :class:`PresenceMirror` refreshes a :class:`~gateway.storage.presence.Presence` from the presence table the
  gateways flush (``gateway_devices``), so the console's device lists and ``device`` events come from the store too.

Nothing here writes to the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from common.db import DATABASE_ERRORS, Connection, Row, open_database
from gateway.config import FiregridConfig
from gateway.storage.presence import DeviceState, Presence

log = logging.getLogger("firegrid.console")

CHANNEL = "firegrid_changes"

_COLUMNS = "id, ts_ms, kind, building, alert_id, incident_id, data"


class FeedError(Exception):
    """The change log could not be read (the store is unreachable); the feed retries."""


@dataclass(frozen=True, slots=True)
class ChangeRow:
    """One ``change_log`` row: ``kind`` is the live stream's event type, ``data`` its JSON object."""

    id: int
    ts_ms: int
    kind: str
    building: str | None
    alert_id: int | None
    incident_id: int | None
    data: Mapping[str, Any]

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ChangeRow:
        row_id, ts_ms, kind, building, alert_id, incident_id, data = row
        # TEXT on SQLite; a PostgreSQL store may keep it as JSONB, which psycopg hands over already decoded
        decoded = orjson.loads(data) if isinstance(data, str | bytes) else data
        return cls(
            id=int(row_id),
            ts_ms=int(ts_ms),
            kind=str(kind),
            building=building,
            alert_id=None if alert_id is None else int(alert_id),
            incident_id=None if incident_id is None else int(incident_id),
            data=decoded if isinstance(decoded, Mapping) else {},
        )


class ChangeSource(Protocol):
    """Where the change log is read from."""

    ordered: bool  # whether ids become visible in id order (SQLite: yes)

    async def open(self) -> None: ...

    async def top(self) -> int: ...

    async def rows(self, *, after_id: int, since_ms: int | None) -> list[ChangeRow]: ...

    async def wait(self, within: float) -> bool:
        """Return when a change may have been committed (True: notified) or after ``within`` seconds (False)."""
        ...

    async def close(self) -> None: ...


class SqliteChanges:
    """The change log of a SQLite store (WAL: reading never blocks the gateway's commits)."""

    ordered = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        if self._db is None:
            self._db = await asyncio.to_thread(open_database, self.path)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise FeedError("the change log is not open")
        return self._db

    async def top(self) -> int:
        db = self._conn()
        return await asyncio.to_thread(
            lambda: int(db.execute("SELECT COALESCE(MAX(id), 0) FROM change_log").fetchone()[0])
        )

    async def rows(self, *, after_id: int, since_ms: int | None) -> list[ChangeRow]:
        db = self._conn()

        def read() -> list[ChangeRow]:
            if since_ms is None:
                found = db.execute(f"SELECT {_COLUMNS} FROM change_log WHERE id > ? ORDER BY id", (after_id,))
            else:
                found = db.execute(
                    f"SELECT {_COLUMNS} FROM change_log WHERE id > ? OR ts_ms > ? ORDER BY id", (after_id, since_ms)
                )
            return [ChangeRow.from_row(tuple(r)) for r in found.fetchall()]

        try:
            return await asyncio.to_thread(read)
        except sqlite3.Error as exc:
            raise FeedError(f"reading the change log failed: {exc}") from exc

    async def wait(self, within: float) -> bool:
        await asyncio.sleep(within)
        return False

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


class PostgresChanges:
    """The change log of a PostgreSQL store: ``LISTEN firegrid_changes`` on a connection of its own (a task reads
    its notifications all the time, so none arrives between two waits unheard), queries on another."""

    ordered = False

    def __init__(self, url: str) -> None:
        self.url = url
        self._listen: Any = None  # psycopg.AsyncConnection (imported lazily: SQLite deployments never load it)
        self._query: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._woken = asyncio.Event()

    async def open(self) -> None:
        import psycopg

        await self.close()
        try:
            self._listen = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            await self._listen.execute(f"LISTEN {CHANNEL}")
            self._query = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            await self.close()
            raise FeedError(f"connecting to the store failed: {exc}") from exc
        self._reader = asyncio.create_task(self._read_notifications(), name="change-feed-listen")

    async def _read_notifications(self) -> None:
        try:
            async for _ in self._listen.notifies():
                self._woken.set()
        except Exception as exc:  # the connection broke: wake the feed, whose next query fails and reconnects
            log.warning("LISTEN %s ended: %s", CHANNEL, exc)
        finally:
            self._woken.set()
            self._reader = None

    def _conn(self) -> Any:
        if self._query is None or self._reader is None:
            raise FeedError("the change log's connections are closed")
        return self._query

    async def top(self) -> int:
        import psycopg

        try:
            cur = await self._conn().execute("SELECT COALESCE(MAX(id), 0) FROM change_log")
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise FeedError(f"reading the change log failed: {exc}") from exc
        return int(row[0]) if row else 0

    async def rows(self, *, after_id: int, since_ms: int | None) -> list[ChangeRow]:
        import psycopg

        try:
            cur = await self._conn().execute(
                f"SELECT {_COLUMNS} FROM change_log WHERE id > %s OR ts_ms > %s ORDER BY id",
                (after_id, since_ms if since_ms is not None else 2**62),
            )
            found = await cur.fetchall()
        except psycopg.Error as exc:
            raise FeedError(f"reading the change log failed: {exc}") from exc
        return [ChangeRow.from_row(tuple(r)) for r in found]

    async def wait(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), within)
        woken = self._woken.is_set()
        self._woken.clear()  # notifications that came meanwhile are covered by the read that follows
        return woken

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        for name in ("_listen", "_query"):
            conn = getattr(self, name)
            setattr(self, name, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


def source_for(*, path: str | Path | None = None, url: str | None = None) -> ChangeSource:
    """The change log of the store at ``url`` (``postgresql://...``) or, without one, the SQLite file ``path``."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"store url {url!r}: only postgresql:// is supported")
        return PostgresChanges(url)
    if path is None:
        raise ValueError("give the store's path or url")
    return SqliteChanges(path)


class ChangeFeed:
    """Follows the change log from where it stood at start: each new row is handed to ``publish`` once, in id
    order within a read.  See the module docstring."""

    def __init__(
        self,
        *,
        source: ChangeSource,
        publish: Callable[[ChangeRow], None],
        poll_s: float = 0.5,
        safety_poll_s: float = 5.0,
        overlap_ids: int = 1000,
        overlap_ms: int = 10_000,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.source = source
        self.publish = publish
        # SQLite polls; PostgreSQL is woken by NOTIFY and polls only in case one was missed (a reconnect)
        self.interval_s = poll_s if source.ordered else safety_poll_s
        self.overlap_ids = overlap_ids
        self.overlap_ms = overlap_ms
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.last_id = 0
        self._sent: dict[int, int] = {}  # id -> ts_ms of the rows in the overlap window already handed on
        self.started = asyncio.Event()
        self.healthy = False
        self.last_error: str | None = None
        self.last_read_ms = 0
        self.published = 0
        self._stopping = False

    async def start(self) -> None:
        """Open the source and take its newest id: the console shows what happens from now on (the lists it
        serves come from the store itself)."""
        await self.source.open()
        self.last_id = await self.source.top()
        if not self.source.ordered:
            # the overlap window's rows are history too: remember them as handed on, or the first read would
            # show them as new
            since = self._clock_ms() - self.overlap_ms
            for row in await self.source.rows(after_id=max(0, self.last_id - self.overlap_ids), since_ms=since):
                self._sent[row.id] = row.ts_ms
                self.last_id = max(self.last_id, row.id)
        self.healthy = True
        self.last_read_ms = self._clock_ms()
        self.started.set()

    async def catch_up(self) -> int:
        """Read and hand on what is new; returns how many rows were handed on."""
        source = self.source
        if source.ordered:
            rows = await source.rows(after_id=self.last_id, since_ms=None)
            floor, since = self.last_id, None
        else:
            floor = max(0, self.last_id - self.overlap_ids)
            since = self._clock_ms() - self.overlap_ms
            rows = await source.rows(after_id=floor, since_ms=since)
        handed = 0
        for row in rows:
            if row.id in self._sent or (source.ordered and row.id <= self.last_id):
                continue
            try:
                self.publish(row)
            except Exception:  # one bad row must not stop the console's live view
                log.exception("could not publish change %d", row.id)
            handed += 1
            self.last_id = max(self.last_id, row.id)
            if not source.ordered:
                self._sent[row.id] = row.ts_ms
        if self._sent:
            # forget ids the overlap query can no longer return
            floor = max(0, self.last_id - self.overlap_ids)
            since = self._clock_ms() - self.overlap_ms
            self._sent = {i: ts for i, ts in self._sent.items() if i > floor or ts > since}
        self.published += handed
        self.last_read_ms = self._clock_ms()
        return handed

    async def run(self) -> None:
        """Until :meth:`stop`: wait, read, hand on.  A failed read is logged and retried with backoff (reopening
        the source); the feed never ends because the store was away."""
        delay = 0.5
        while not self._stopping:
            try:
                if not self.started.is_set():
                    await self.start()
                await self.catch_up()
                self.healthy, self.last_error, delay = True, None, 0.5
                await self.source.wait(self.interval_s)
            except FeedError as exc:
                if not self._stopping:
                    self.healthy, self.last_error = False, str(exc)
                    log.warning("change feed: %s; retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    with contextlib.suppress(FeedError):
                        await self.source.open()

    def stop(self) -> None:
        self._stopping = True

    async def close(self) -> None:
        self._stopping = True
        await self.source.close()


_PRESENCE_COLUMNS = (
    "device, building, kind, floor, grid, registered, last_seen_ms, last_values, battery, status, status_ts_ms"
)


class PresenceMirror:
    """Keeps ``presence`` (built over the district's config) equal to the presence table the gateways flush about
    once a second, and sweeps it, so its ``on_change`` publishes devices going offline or coming back.  Reads in a
    worker thread; changes the records on the event loop (routes read them there, never across an await)."""

    def __init__(
        self, presence: Presence, *, target: str | Path, config: FiregridConfig, interval_s: float = 1.0
    ) -> None:
        """``target``: the store, a SQLite path or a PostgreSQL URL."""
        self.presence = presence
        self.target = target
        self.interval_s = interval_s
        self._heartbeats = {kind.value: s for kind, s in config.presence.heartbeat_s.items()}
        self._db: Connection | None = None
        self.last_error: str | None = None
        self.refreshed = 0

    def _read(self) -> list[tuple[Any, ...]]:
        """In the worker thread: the rows that differ from the records (a district's 100,000 devices are compared
        here, not on the event loop; a record the loop changes meanwhile is only compared again next time)."""
        if self._db is None:
            self._db = open_database(self.target)
        devices = self.presence.devices
        changed = []
        for row in self._db.execute(f"SELECT {_PRESENCE_COLUMNS} FROM gateway_devices"):
            state = devices.get(row[0])
            if state is None or _facts(state) != _row_facts(row):
                changed.append(tuple(row))
        return changed

    def apply(self, rows: list[tuple[Any, ...]]) -> int:
        """Bring the records up to ``rows``; returns how many changed."""
        devices = self.presence.devices
        changed = 0
        for row in rows:
            device, building, kind, floor, grid, _registered, seen, values, battery, status, status_ts = row
            state = devices.get(device)
            if state is None:
                # a device the registry does not know (contract.allow_unregistered), heard by some gateway
                state = devices[device] = DeviceState(
                    device=device,
                    building=building,
                    kind=kind,
                    floor=floor,
                    grid=grid,
                    registered=False,
                    heartbeat_s=self._heartbeats.get(kind, 300),
                )
            if _facts(state) == _row_facts(row):
                continue
            state.last_seen_ms = seen
            state.last_values = orjson.loads(values) if values else {}
            state.battery = battery
            state.status = status
            state.status_ts_ms = status_ts
            changed += 1
        return changed

    async def refresh(self) -> int:
        rows = await asyncio.to_thread(self._read)
        changed = self.apply(rows)
        self.presence.sweep(now_ms=time.time_ns() // 1_000_000)
        self.refreshed += 1
        return changed

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
                self.last_error = None
            except DATABASE_ERRORS as exc:  # the store away for a moment: the lists stay as they were
                self.last_error = str(exc)
                log.warning("presence refresh failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def _facts(state: DeviceState) -> tuple[Any, ...]:
    """What a gateway's flush changes about a device (``last_values`` changes only with ``last_seen_ms``)."""
    return (state.last_seen_ms, state.battery, state.status, state.status_ts_ms)


def _row_facts(row: tuple[Any, ...] | Row) -> tuple[Any, ...]:
    return (row[6], row[8], row[9], row[10])  # the columns of _facts, in _PRESENCE_COLUMNS
