"""The notifier's side of the outbox: what is due (fire first), marking attempts and outcomes, the SMS counts the
budget and rate limits read, reconciling an SMS whose fate is unknown, disabling an endpoint, pruning."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from alerts.records import OutboxItem, OutboxRecord, Outcome
from alerts.store.core import Core, building_scope
from alerts.store.errors import AlertStoreError


class Outbox:
    """The notifier's side of the outbox (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def recover(self, *, now_ms: int, buildings: Collection[str] | None = None) -> int:
        """After a restart: an SMS caught in ``attempting`` may or may not have gone out.  It becomes ``unknown``
        (to reconcile with the provider), never a blind resend.  ``buildings``: only the rows of these buildings
        (in cluster mode another gateway's rows in ``attempting`` are its sends in flight, not interrupted ones)."""
        scope, args = building_scope(buildings)
        with self._core.tx() as cur:
            # A robot message is at least once (like a webhook): one interrupted mid-request goes again.
            cur.execute(
                "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = 'interrupted while sending'"
                " WHERE state = 'attempting' AND channel = 'robot'" + scope,
                (now_ms, *args),
            )
            cur.execute(
                "UPDATE outbox SET state = 'unknown', done_ms = ?, last_error = 'interrupted while sending'"
                " WHERE state = 'attempting'" + scope,
                (now_ms, *args),
            )
            return int(cur.rowcount)

    def claim(self, item_id: int, *, now_ms: int) -> bytes | None:
        """Take a pending row out of coalescing (``attempting``) and return its body as it is now: an update
        coalesced into it after it was picked goes out with it, one made after this goes into a new row."""
        with self._core.tx() as cur:
            # One statement: of two notifiers (cluster mode) claiming the same row, one gets it.  (The attempt is
            # counted when its outcome is recorded.)
            row = cur.execute(
                "UPDATE outbox SET state = 'attempting', attempt_ms = ? WHERE id = ? AND state = 'pending'"
                " RETURNING body",
                (now_ms, item_id),
            ).fetchone()
            return None if row is None else bytes(row[0])

    def due(
        self,
        *,
        now_ms: int,
        limit: int = 100,
        exclude: Iterable[int] = (),
        channel: str | None = None,
        exclude_targets: Iterable[str] = (),
        buildings: Collection[str] | None = None,
    ) -> list[OutboxItem]:
        """Pending rows whose time has come, highest priority (fire) first, skipping ``exclude`` (in flight) and
        rows for ``exclude_targets`` (endpoints already at their share of the workers).  ``buildings``: only the
        rows of these buildings (a cluster gateway drains the outbox of the buildings it owns; None: every row)."""
        skip = set(exclude)
        # Walk the (channel, priority, id) index and stop after ``limit`` rows: never sort the whole backlog.
        # (INDEXED BY is SQLite's; PostgreSQL's planner picks the partial index by itself.)
        sql = "SELECT * FROM outbox WHERE state = 'pending' AND next_ms <= ?"
        args: list[Any] = [now_ms]
        if channel is not None:
            hint = " INDEXED BY outbox_due" if self._core.dialect == "sqlite" and buildings is None else ""
            sql = f"SELECT * FROM outbox{hint} WHERE state = 'pending' AND channel = ? AND next_ms <= ?"
            args = [channel, now_ms]
        if buildings is not None and not buildings:
            return []
        scope, scoped = building_scope(buildings)
        sql += scope
        args.extend(scoped)
        targets = list(exclude_targets)
        if targets:
            sql += f" AND target NOT IN ({','.join('?' * len(targets))})"
            args.extend(targets)
        sql += " ORDER BY priority DESC, id LIMIT ?"
        args.append(limit + len(skip))
        with self._core.lock:
            rows = self._core.db.execute(sql, args).fetchall()
        return [OutboxItem.from_row(r) for r in rows if r["id"] not in skip][:limit]

    def next_due_ms(
        self,
        *,
        exclude: Iterable[int] = (),
        channels: Iterable[str] | None = None,
        buildings: Collection[str] | None = None,
        _channel: str | None = None,
    ) -> int | None:
        """When the next pending row (not in ``exclude``, in one of ``channels``, of one of ``buildings``) is due."""
        sql = "SELECT MIN(next_ms) FROM outbox WHERE state = 'pending'"
        args: list[Any] = []
        if buildings is not None and not buildings:
            return None
        scope, scoped = building_scope(buildings)
        sql += scope
        args.extend(scoped)
        skip = list(exclude)
        if skip:
            sql += f" AND id NOT IN ({','.join('?' * len(skip))})"
            args.extend(skip)
        if channels is not None:
            wanted = list(channels)
            if not wanted:
                return None
            # One indexed MIN per channel (channel, next_ms): never a scan of the whole backlog.
            found = [self.next_due_ms(exclude=skip, channels=None, buildings=buildings, _channel=ch) for ch in wanted]
            times = [t for t in found if t is not None]
            return min(times) if times else None
        if _channel is not None:
            sql += " AND channel = ?"
            args.append(_channel)
        with self._core.lock:
            row = self._core.db.execute(sql, args).fetchone()
        return None if row[0] is None else int(row[0])

    def outbox(self, *, state: str | None = None, channel: str | None = None) -> list[OutboxRecord]:
        """Outbox rows (for tests, the API and operators reconciling ``unknown`` SMS)."""
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if channel:
            where.append("channel = ?")
            args.append(channel)
        sql = "SELECT * FROM outbox" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._core.lock:
            rows = self._core.db.execute(sql, args).fetchall()
        return [OutboxRecord.from_row(r) for r in rows]

    def mark_attempting(self, item_id: int, *, now_ms: int) -> None:
        with self._core.tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'attempting', attempt_ms = ?, attempts = attempts + 1 WHERE id = ?",
                (now_ms, item_id),
            )

    def mark_done(
        self, item_id: int, *, state: str, now_ms: int, error: str | None = None, attempted: bool = False
    ) -> None:
        """``sent``, ``failed`` (permanent), ``unknown`` (SMS timed out), ``suppressed`` (budget), ``dead``."""
        with self._core.tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = ?, done_ms = ?, last_error = ?, attempts = attempts + ?,"
                " attempt_ms = COALESCE(attempt_ms, ?) WHERE id = ?",
                (state, now_ms, error, int(attempted), now_ms, item_id),
            )

    def mark_retry(self, item_id: int, *, next_ms: int, error: str | None, count_attempt: bool = False) -> None:
        with self._core.tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = ?,"
                " attempts = attempts + ? WHERE id = ?",
                (next_ms, error, int(count_attempt), item_id),
            )

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record many delivery attempts in ONE transaction."""
        retries = [(o.next_ms, o.error, int(o.attempted), o.now_ms, o.id) for o in outcomes if o.state == "pending"]
        done = [
            (o.state, o.now_ms, o.error, int(o.attempted), o.now_ms, o.id) for o in outcomes if o.state != "pending"
        ]
        with self._core.tx() as cur:
            if retries:
                cur.executemany(
                    "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = ?, attempts = attempts + ?,"
                    " attempt_ms = ? WHERE id = ?",
                    retries,
                )
            if done:
                cur.executemany(
                    "UPDATE outbox SET state = ?, done_ms = ?, last_error = ?, attempts = attempts + ?,"
                    " attempt_ms = COALESCE(attempt_ms, ?) WHERE id = ?",
                    done,
                )

    def sms_count(self, *, phone: str | None, since_ms: int) -> int:
        """SMS that went (or may have gone) out since ``since_ms``: to one number, or to anyone."""
        return int(self._sms_since("COUNT(*)", phone=phone, since_ms=since_ms) or 0)

    def oldest_sms_since(self, *, phone: str | None, since_ms: int) -> int | None:
        found = self._sms_since("MIN(attempt_ms)", phone=phone, since_ms=since_ms)
        return None if found is None else int(found)

    def _sms_since(self, aggregate: str, *, phone: str | None, since_ms: int) -> Any:
        sql = (
            f"SELECT {aggregate} FROM outbox WHERE channel = 'sms' AND state IN ('attempting', 'sent', 'unknown')"
            " AND attempt_ms >= ?"
        )
        args: list[Any] = [since_ms]
        if phone is not None:
            sql += " AND phone = ?"
            args.append(phone)
        with self._core.lock:
            return self._core.db.execute(sql, args).fetchone()[0]

    def prune_outbox(self, *, before_ms: int) -> int:
        """Forget finished outbox rows older than ``before_ms`` (the alerts and their audit trail stay).  SMS rows
        are kept for two days at least: the daily budget and the rate limits count them."""
        with self._core.tx() as cur:
            cur.execute(
                "DELETE FROM outbox WHERE state IN ('sent', 'failed', 'dead', 'suppressed', 'cancelled')"
                " AND COALESCE(done_ms, created_ms) < ? AND (channel != 'sms' OR created_ms < ?)",
                (before_ms, before_ms - 2 * 86_400_000),
            )
            return int(cur.rowcount)

    def reconcile_sms(self, item_id: int, *, delivered: bool, now_ms: int) -> None:
        """An operator checked an ``unknown`` SMS with the provider: mark it ``sent``, or queue it again."""
        with self._core.tx() as cur:
            row = cur.execute(
                "SELECT state FROM outbox WHERE id = ? AND channel = 'sms'" + cur.for_update, (item_id,)
            ).fetchone()
            if row is None or row["state"] != "unknown":
                raise AlertStoreError(f"outbox row {item_id} is not an SMS in state unknown")
            if delivered:
                cur.execute(
                    "UPDATE outbox SET state = 'sent', last_error = 'reconciled: delivered' WHERE id = ?", (item_id,)
                )
            else:
                cur.execute(
                    "UPDATE outbox SET state = 'pending', next_ms = ?, last_error = 'reconciled: not delivered',"
                    " dedup = NULL WHERE id = ?",
                    (now_ms, item_id),
                )

    def disable_endpoint(self, target: str, *, reason: str, now_ms: int) -> None:
        with self._core.tx() as cur:
            cur.execute(
                "INSERT INTO endpoints (target, disabled_ms, reason) VALUES (?,?,?) ON CONFLICT (target)"
                " DO UPDATE SET disabled_ms = excluded.disabled_ms, reason = excluded.reason",
                (target, now_ms, reason),
            )
            cur.execute(
                "UPDATE outbox SET state = 'failed', done_ms = ?, last_error = ?"
                " WHERE target = ? AND state = 'pending'",
                (now_ms, f"endpoint disabled: {reason}", target),
            )

    def enable_endpoint(self, target: str) -> None:
        with self._core.tx() as cur:
            cur.execute("DELETE FROM endpoints WHERE target = ?", (target,))

    def disabled_endpoints(self) -> dict[str, str]:
        with self._core.lock:
            return {r[0]: r[1] or "" for r in self._core.db.execute("SELECT target, reason FROM endpoints")}
