"""The gateway's side of inspections: looking at deadlines on a clock and committing what they decide through the
gateway's own commit path (``Pipeline.submit_transitions``), so an overdue inspection or rectification is an alert in
the same loop as a detector's (incident, pages, governance webhook, dashboard).

The decision itself is pure (:func:`alerts.inspections.deadlines.transitions`); this module gathers its inputs (the
store's records, which monitored extinguishers are healthy) and its clock is injected, so tests move time instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from alerts.inspections import deadlines
from alerts.inspections.deadlines import PointDue, point_due
from alerts.inspections.store import InspectionStore
from alerts.store import AlertStore
from gateway.config import FiregridConfig
from rules.types import AlertTransition

log = logging.getLogger("firegrid.inspections")

Apply = Callable[[list[AlertTransition]], Awaitable[None]]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class InspectionDeadlines:
    """``apply``: how transitions are committed (the pipeline's ``submit_transitions``); None: straight into the
    alert store (a gateway without a pipeline, e.g. the API served alone)."""

    def __init__(
        self,
        *,
        config: FiregridConfig,
        store: InspectionStore,
        presence: Any = None,
        apply: Apply | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.config = config
        self.store = store
        self.presence = presence
        self.apply = apply
        self.clock_ms = clock_ms
        self._lock = asyncio.Lock()
        self._grids = {b.id: b.grid for b in config.buildings}

    @property
    def alerts(self) -> AlertStore:
        return self.store.alerts

    def healthy(self, *, now_ms: int) -> set[str]:
        """Points whose monitored extinguisher is online and has no open alert: they inspect themselves."""
        monitored = {p.device: p.id for p in self.config.inspection_points if p.device is not None}
        if not monitored or self.presence is None:
            return set()
        alarmed = {a.device for a in self.alerts.active_alerts() if a.device is not None}
        out: set[str] = set()
        for device, point in monitored.items():
            try:
                state = self.presence.get_device(device, now_ms=now_ms)
            except Exception:  # presence is a view: an unknown device is simply not healthy
                state = None
            if state is not None and state.get("state") == "online" and device not in alarmed:
                out.add(point)
        return out

    def due(self, *, now_ms: int) -> dict[str, PointDue]:
        """Every configured point's deadline (for the API and the dashboard); a point not seen before counts from
        now, as in :meth:`transitions`."""
        states = self.store.point_states()
        unseen = [p.id for p in self.config.inspection_points if p.id not in states]
        if unseen:  # a write (and an fsync) only when the config has a point the store does not know yet
            self.store.touch_points(unseen, now_ms=now_ms)
            states = self.store.point_states()
        healthy = self.healthy(now_ms=now_ms)
        out: dict[str, PointDue] = {}
        for point in self.config.inspection_points:
            state = states.get(point.id)
            if state is not None:
                out[point.id] = point_due(
                    point, state, grace_ms=self.config.inspections.grace_ms, healthy=point.id in healthy
                )
        return out

    def transitions(self, *, now_ms: int) -> list[AlertTransition]:
        """What the deadlines say at ``now_ms`` (blocking: the store's reads; run it off the event loop)."""
        points = self.config.inspection_points
        self.store.touch_points((p.id for p in points), now_ms=now_ms)
        return deadlines.transitions(
            config=self.config.inspections,
            points=points,
            states=self.store.point_states(),
            grids=self._grids,
            hazards=self.store.deadline_hazards(),
            active=self.store.active_overdue(),
            healthy=self.healthy(now_ms=now_ms),
            now_ms=now_ms,
        )

    async def check(self, *, now_ms: int | None = None) -> list[AlertTransition]:
        """Look at the deadlines now (or at ``now_ms``) and commit what they decide.  One check at a time, so two
        checks never raise the same overdue point twice."""
        async with self._lock:
            now = self.clock_ms() if now_ms is None else now_ms
            found = await asyncio.to_thread(self.transitions, now_ms=now)
            if found:
                if self.apply is not None:
                    await self.apply(found)
                else:
                    await asyncio.to_thread(self.alerts.apply, found, now_ms=now)
            return found

    async def run(self) -> None:
        """Check every ``inspections.check_interval_s`` until cancelled; a failed check is logged and retried."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inspection deadline check failed; trying again")
            await asyncio.sleep(self.config.inspections.check_interval_s)
