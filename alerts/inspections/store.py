"""Inspections, hazards and photos, in the alert store's file and under its lock: a hazard step and the governance
webhook rows it causes commit in ONE transaction (the outbox is the alert store's), so the platform hears of every
step exactly as it happened, or of none of it.

The lifecycle of a hazard: ``reported`` -> ``assigned`` (to a roster member or a station, with a deadline) ->
``rectifying`` -> ``rectified`` (with a photo) -> ``verified``; a rectification that does not hold is reopened (back
to ``rectifying`` with a new deadline).  Every step is in ``hazard_audit`` and is a ``hazard.<step>`` event.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import orjson

from alerts import fanout
from alerts.inspections.config import InspectionPoint, InspectionsConfig
from alerts.inspections.deadlines import RULES
from alerts.inspections.photos import CleanPhoto
from alerts.inspections.records import (
    CheckResult,
    HazardAuditEntry,
    HazardRecord,
    InspectionChange,
    InspectionRecord,
    PhotoRecord,
    PointState,
)
from alerts.store import AlertStore
from alerts.store.core import Core, TxCursor
from common.db import Row
from rules.types import Severity

log = logging.getLogger("firegrid.inspections")

PHOTO_ID_CHARS = frozenset("0123456789abcdef-ph")


class InspectionError(Exception):
    """Base of the inspection store's refusals."""


class HazardNotFound(InspectionError):
    pass


class InvalidHazardStep(InspectionError):
    """The step does not apply to the hazard in its current state (e.g. verifying one not yet rectified)."""


class PhotoNotFound(InspectionError):
    pass


# The step -> the states it may be taken from, and the state it leads to.
_STEPS: dict[str, tuple[tuple[str, ...], str]] = {
    "assigned": (("reported", "assigned", "rectifying"), "assigned"),
    "rectifying": (("assigned",), "rectifying"),
    "rectified": (("assigned", "rectifying"), "rectified"),
    "verified": (("rectified",), "verified"),
    "reopened": (("rectified", "verified"), "rectifying"),
}


class InspectionStore:
    """Beside an :class:`~alerts.store.AlertStore` (same connection, lock and outbox).  ``photo_dir``: where photo
    files go (the store's directory's ``photos/`` by default); ``on_commit``: called after each committed change
    that queued notifications (the gateway wakes its notifier)."""

    def __init__(
        self,
        alerts: AlertStore,
        *,
        config: InspectionsConfig,
        photo_dir: Path | None = None,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self.alerts = alerts
        self.config = config
        self.photo_dir = photo_dir or alerts.path.parent / "photos"
        self.on_commit = on_commit
        self._core: Core = alerts.core
        self._listeners: list[Callable[[InspectionChange], None]] = []

    def add_listener(self, listener: Callable[[InspectionChange], None]) -> None:
        """``listener(change)`` after each committed inspection and hazard step (the dashboard's live stream).
        Called on the committing thread, after the commit: it must not block, and what it raises is logged."""
        self._listeners.append(listener)

    def _publish(self, changes: Iterable[InspectionChange]) -> None:
        for change in changes:
            for listener in list(self._listeners):
                try:
                    listener(change)
                except Exception:  # a listener never undoes or stops a committed step
                    log.exception("an inspection listener failed on %s", change.type)

    # ------------------------------------------------------------------ photos
    def save_photo(self, photo: CleanPhoto, *, building: str | None, now_ms: int) -> PhotoRecord:
        """Store a re-encoded photo under a generated name (never the client's) and record it."""
        photo_id = f"ph-{uuid.uuid4().hex}"
        self.photo_dir.mkdir(parents=True, exist_ok=True)
        final = self.photo_path(photo_id)
        partial = final.with_suffix(".part")
        partial.write_bytes(photo.data)
        try:
            os.replace(partial, final)
            with self._core.tx() as cur:
                cur.execute(
                    "INSERT INTO photos (id, building, mime, width, height, bytes, created_ms) VALUES (?,?,?,?,?,?,?)",
                    (photo_id, building, photo.mime, photo.width, photo.height, len(photo.data), now_ms),
                )
        except BaseException:
            for path in (partial, final):
                with contextlib.suppress(OSError):
                    path.unlink()
            raise
        return PhotoRecord(photo_id, building, photo.mime, photo.width, photo.height, len(photo.data), now_ms)

    def photo(self, photo_id: str) -> PhotoRecord | None:
        if not photo_id.startswith("ph-") or len(photo_id) > 40 or not set(photo_id) <= PHOTO_ID_CHARS:
            return None
        with self._core.lock:
            row = self._core.db.execute("SELECT * FROM photos WHERE id = ?", (photo_id,)).fetchone()
        if row is None:
            return None
        return PhotoRecord(
            row["id"], row["building"], row["mime"], row["width"], row["height"], row["bytes"], row["created_ms"]
        )

    def photo_path(self, photo_id: str) -> Path:
        return self.photo_dir / f"{photo_id}.jpg"

    def _check_photo(self, cur: TxCursor, photo_id: str | None) -> None:
        if photo_id is not None and cur.execute("SELECT 1 FROM photos WHERE id = ?", (photo_id,)).fetchone() is None:
            raise PhotoNotFound(f"no photo {photo_id!r}")

    # ------------------------------------------------------------------ inspections
    def touch_points(self, points: Iterable[str], *, now_ms: int) -> None:
        """Remember when each point was first known (its first deadline counts from then)."""
        with self._core.tx() as cur:
            cur.executemany(
                "INSERT INTO inspection_points_seen (point, since_ms) VALUES (?, ?) ON CONFLICT (point) DO NOTHING",
                [(p, now_ms) for p in points],
            )

    def point_states(self) -> dict[str, PointState]:
        with self._core.lock:
            rows = self._core.db.execute(
                "SELECT s.point, s.since_ms, (SELECT MAX(ts_ms) FROM inspections i WHERE i.point = s.point) AS last"
                " FROM inspection_points_seen s"
            ).fetchall()
        return {r["point"]: PointState(r["point"], r["since_ms"], r["last"]) for r in rows}

    def record_inspection(
        self,
        *,
        point: InspectionPoint,
        grid: str | None,
        inspector: str,
        results: Sequence[CheckResult],
        note: str | None,
        photo: str | None,
        source: str,
        now_ms: int,
    ) -> tuple[InspectionRecord, list[HazardRecord]]:
        """One inspection, and a hazard for each failed item, with their events, in one transaction."""
        failed = [r for r in results if not r.ok]
        with self._core.tx() as cur:
            self._check_photo(cur, photo)
            cur.execute(
                "INSERT INTO inspection_points_seen (point, since_ms) VALUES (?, ?) ON CONFLICT (point) DO NOTHING",
                (point.id, now_ms),
            )
            cur.execute(
                "INSERT INTO inspections (point, building, grid, inspector, ts_ms, results, failed, note, photo,"
                " source) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id",
                (
                    point.id,
                    point.building,
                    grid,
                    inspector,
                    now_ms,
                    orjson.dumps([{"item": r.item, "ok": r.ok} for r in results]).decode(),
                    len(failed),
                    note,
                    photo,
                    source,
                ),
            )
            inspection_id = int(cur.fetchone()[0])
            row = cur.execute("SELECT * FROM inspections WHERE id = ?", (inspection_id,)).fetchone()
            inspection = InspectionRecord.from_row(row)
            severity = Severity.WARNING if not failed else Severity.SUPERVISORY
            self._event(cur, "inspection.recorded", inspection.payload(), severity=severity, now_ms=now_ms)
            hazards = [
                self._insert_hazard(
                    cur,
                    building=point.building,
                    grid=grid,
                    floor=point.floor,
                    point=point.id,
                    location=point.location,
                    category=point.kind,
                    description=r.item + (f": {note}" if note else ""),
                    photo=photo,
                    reporter=inspector,
                    source="inspection",
                    inspection_id=inspection_id,
                    now_ms=now_ms,
                )
                for r in failed
            ]
        self._committed()
        self._publish(
            [
                InspectionChange("inspection.recorded", now_ms, inspection=inspection),
                *(InspectionChange("hazard.reported", now_ms, hazard=h) for h in hazards),
            ]
        )
        return inspection, hazards

    def list_inspections(
        self,
        *,
        point: str | None = None,
        building: str | list[str] | None = None,
        grid: str | None = None,
        since_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[InspectionRecord]:
        where, args = _scope(building=building, grid=grid)
        if point is not None:
            where.append("point = ?")
            args.append(point)
        if since_ms is not None:
            where.append("ts_ms >= ?")
            args.append(since_ms)
        rows = self._page("inspections", where, args, order="ts_ms DESC, id DESC", limit=limit, offset=offset)
        return [InspectionRecord.from_row(r) for r in rows]

    def inspected_between(self, *, start_ms: int, end_ms: int) -> set[str]:
        """The points with at least one inspection in [start_ms, end_ms)."""
        with self._core.lock:
            rows = self._core.db.execute(
                "SELECT DISTINCT point FROM inspections WHERE ts_ms >= ? AND ts_ms < ?", (start_ms, end_ms)
            ).fetchall()
        return {r[0] for r in rows}

    # ------------------------------------------------------------------ hazards
    def report_hazard(
        self,
        *,
        building: str,
        grid: str | None,
        floor: int | None,
        point: str | None,
        location: str | None,
        category: str,
        description: str,
        photo: str | None,
        reporter: str | None,
        source: str,
        now_ms: int,
    ) -> HazardRecord:
        with self._core.tx() as cur:
            self._check_photo(cur, photo)
            hazard = self._insert_hazard(
                cur,
                building=building,
                grid=grid,
                floor=floor,
                point=point,
                location=location,
                category=category,
                description=description,
                photo=photo,
                reporter=reporter,
                source=source,
                inspection_id=None,
                now_ms=now_ms,
            )
        self._committed()
        self._publish([InspectionChange("hazard.reported", now_ms, hazard=hazard)])
        return hazard

    def step(
        self,
        hazard_id: int,
        step: str,
        *,
        by: str | None,
        now_ms: int,
        assignee: str | None = None,
        deadline_ms: int | None = None,
        photo: str | None = None,
        note: str | None = None,
    ) -> HazardRecord:
        """Take one lifecycle step (``assigned``, ``rectifying``, ``rectified``, ``verified``, ``reopened``)."""
        allowed, target = _STEPS[step]
        with self._core.tx() as cur:
            # FOR UPDATE on PostgreSQL: the state read here decides the step.
            row = cur.execute("SELECT * FROM hazards WHERE id = ?" + cur.for_update, (hazard_id,)).fetchone()
            if row is None:
                raise HazardNotFound(f"no hazard {hazard_id}")
            if row["state"] not in allowed:
                raise InvalidHazardStep(
                    f"hazard {hazard_id} is {row['state']}: it can be {step} only when {' or '.join(allowed)}"
                )
            sets: dict[str, Any] = {"state": target, "updated_ms": now_ms}
            detail: dict[str, Any] = {}
            if step == "assigned":
                if not assignee:
                    raise InvalidHazardStep("assigning needs someone to assign it to")
                deadline = deadline_ms or now_ms + self.config.rectify_days * 86_400_000
                sets.update(assignee=assignee, deadline_ms=deadline)
                detail.update(to=assignee, deadline_ms=deadline)
            elif step == "rectified":
                if photo is None:
                    raise InvalidHazardStep("a rectification needs a photo of the result")
                self._check_photo(cur, photo)
                sets.update(rectify_photo=photo, rectify_note=note, rectified_ms=now_ms)
                detail.update(photo=photo)
            elif step == "verified":
                sets.update(verified_ms=now_ms, verified_by=by)
            elif step == "reopened":
                deadline = deadline_ms or now_ms + self.config.rectify_days * 86_400_000
                sets.update(deadline_ms=deadline, verified_ms=None, verified_by=None, rectified_ms=None)
                detail.update(deadline_ms=deadline)
            if note:
                detail["note"] = note
            columns = ", ".join(f"{k} = ?" for k in sets)
            cur.execute(f"UPDATE hazards SET {columns} WHERE id = ?", (*sets.values(), hazard_id))
            hazard = self._hazard_event(cur, hazard_id, f"hazard.{step}", by=by, detail=detail, now_ms=now_ms)
        self._committed()
        self._publish([InspectionChange(f"hazard.{step}", now_ms, hazard=hazard)])
        return hazard

    def get_hazard(self, hazard_id: int) -> HazardRecord | None:
        with self._core.lock:
            row = self._core.db.execute("SELECT * FROM hazards WHERE id = ?", (hazard_id,)).fetchone()
            if row is None:
                return None
            audit = tuple(
                HazardAuditEntry(a["ts_ms"], a["action"], a["by"], orjson.loads(a["detail"] or "{}"))
                for a in self._core.db.execute(
                    "SELECT * FROM hazard_audit WHERE hazard_id = ? ORDER BY id", (hazard_id,)
                )
            )
        return self._hazard(row, audit)

    def list_hazards(
        self,
        *,
        building: str | list[str] | None = None,
        grid: str | None = None,
        states: Sequence[str] | None = None,
        point: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[HazardRecord]:
        where, args = _scope(building=building, grid=grid)
        if states is not None:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if point is not None:
            where.append("point = ?")
            args.append(point)
        rows = self._page("hazards", where, args, order="reported_ms DESC, id DESC", limit=limit, offset=offset)
        return [self._hazard(r) for r in rows]

    def deadline_hazards(self) -> list[HazardRecord]:
        """Hazards whose rectification deadline runs (for the overdue check)."""
        return self.list_hazards(states=("assigned", "rectifying"), limit=1_000_000)

    def active_overdue(self) -> dict[str, str]:
        """Keys of open overdue alerts (inspections and hazards) whose condition is active -> their building."""
        with self._core.lock:
            rows = self._core.db.execute(
                f"SELECT key, building FROM alerts WHERE open = 1 AND condition = 'active'"
                f" AND rule IN ({','.join('?' * len(RULES))})",
                RULES,
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def _page(self, table: str, where: list[str], args: list[Any], *, order: str, limit: int, offset: int) -> list[Row]:
        """One page of ``table``'s rows matching every condition of ``where``, in ``order``."""
        sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
        sql += f" ORDER BY {order} LIMIT ? OFFSET ?"
        with self._core.lock:
            return self._core.db.execute(sql, [*args, limit, offset]).fetchall()

    # ------------------------------------------------------------------ inside a transaction
    def _insert_hazard(
        self,
        cur: TxCursor,
        *,
        building: str,
        grid: str | None,
        floor: int | None,
        point: str | None,
        location: str | None,
        category: str,
        description: str,
        photo: str | None,
        reporter: str | None,
        source: str,
        inspection_id: int | None,
        now_ms: int,
    ) -> HazardRecord:
        cur.execute(
            "INSERT INTO hazards (building, grid, floor, point, location, category, description, state, source,"
            " reporter, inspection_id, photo, reported_ms, updated_ms) VALUES (?,?,?,?,?,?,?,'reported',?,?,?,?,?,?)"
            " RETURNING id",
            (
                building,
                grid,
                floor,
                point,
                location,
                category,
                description,
                source,
                reporter,
                inspection_id,
                photo,
                now_ms,
                now_ms,
            ),
        )
        hazard_id = int(cur.fetchone()[0])
        return self._hazard_event(
            cur, hazard_id, "hazard.reported", by=reporter, detail={"source": source}, now_ms=now_ms
        )

    def _hazard_event(
        self, cur: TxCursor, hazard_id: int, event: str, *, by: str | None, detail: dict[str, Any], now_ms: int
    ) -> HazardRecord:
        cur.execute(
            "INSERT INTO hazard_audit (hazard_id, ts_ms, action, by, detail) VALUES (?,?,?,?,?)",
            (hazard_id, now_ms, event.partition(".")[2], by, orjson.dumps(detail).decode()),
        )
        hazard = self._hazard(cur.execute("SELECT * FROM hazards WHERE id = ?", (hazard_id,)).fetchone())
        data = hazard.payload()
        data["by"] = by
        self._event(cur, event, data, severity=Severity.SUPERVISORY, now_ms=now_ms)
        return hazard

    def _event(self, cur: TxCursor, event: str, data: dict[str, Any], *, severity: Severity, now_ms: int) -> None:
        # The same outbox, signer and webhooks as alerts: the governance platform gets every step, webhooks
        # subscribed to ``hazard.*`` / ``inspection.*`` (or ``*``) get them too.
        fanout.enqueue(
            cur,
            self._core.notify,
            event,
            data,
            severity=int(severity),
            drill=False,
            test=False,
            alert_id=None,
            incident_id=None,
            now_ms=now_ms,
        )

    def _hazard(self, row: Row, audit: tuple[HazardAuditEntry, ...] = ()) -> HazardRecord:
        return HazardRecord.from_row(row, building_name=self._core.building_name(row["building"]), audit=audit)

    def _committed(self) -> None:
        if self.on_commit is not None:
            self.on_commit()


def _scope(*, building: str | list[str] | None, grid: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if isinstance(building, list):
        if not building:
            where.append("0")
        else:
            where.append(f"building IN ({','.join('?' * len(building))})")
            args.extend(building)
    elif building is not None:
        where.append("building = ?")
        args.append(building)
    if grid is not None:
        where.append("grid = ?")
        args.append(grid)
    return where, args
