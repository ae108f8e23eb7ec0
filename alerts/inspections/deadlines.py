"""Pure: which inspection points and hazards are overdue at ``now_ms``, as the alert transitions that say so.

Records and a clock in, transitions out (no database, no time of day read here): the gateway feeds it what the store
holds and commits what it returns through the same path as the rules engine's transitions, so an overdue point is an
alert like any other (incident, pages, governance, dashboard).  An alert ``cleared`` here only clears its condition;
a person still closes it, as with every alert.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from alerts.inspections.config import InspectionPoint, InspectionsConfig
from alerts.inspections.records import DEADLINE_STATES, HazardRecord, PointState
from rules.types import AlertTransition, Severity

POINT_RULE = "inspection-overdue"
HAZARD_RULE = "hazard-overdue"
RULES = (POINT_RULE, HAZARD_RULE)


def point_key(point: str) -> str:
    return f"{POINT_RULE}:{point}"


def hazard_key(hazard_id: int) -> str:
    return f"{HAZARD_RULE}:{hazard_id}"


@dataclass(frozen=True, slots=True)
class PointDue:
    """A point's deadline: ``due_ms`` None while a monitored extinguisher's telemetry is healthy (it inspects
    itself)."""

    point: InspectionPoint
    last_ms: int | None
    due_ms: int | None

    def overdue(self, now_ms: int) -> bool:
        return self.due_ms is not None and now_ms >= self.due_ms


def point_due(point: InspectionPoint, state: PointState, *, grace_ms: int, healthy: bool) -> PointDue:
    if healthy:
        return PointDue(point=point, last_ms=state.last_ms, due_ms=None)
    base = state.last_ms if state.last_ms is not None else state.since_ms
    return PointDue(point=point, last_ms=state.last_ms, due_ms=base + point.interval_ms + grace_ms)


def transitions(
    *,
    config: InspectionsConfig,
    points: Iterable[InspectionPoint],
    states: Mapping[str, PointState],
    grids: Mapping[str, str],
    hazards: Iterable[HazardRecord],
    active: Mapping[str, str],
    healthy: Collection[str],
    now_ms: int,
) -> list[AlertTransition]:
    """``states``: per point id (a point without one is skipped: the store has not seen it yet); ``active``: the keys
    of open overdue alerts whose condition is active, with their building; ``healthy``: ids of points whose
    monitored device is healthy."""
    out: list[AlertTransition] = []
    overdue: set[str] = set()
    point_severity = Severity.parse(config.overdue_severity)
    for point in points:
        state = states.get(point.id)
        if state is None:
            continue
        due = point_due(point, state, grace_ms=config.grace_ms, healthy=point.id in healthy)
        if not due.overdue(now_ms):
            continue
        key = point_key(point.id)
        overdue.add(key)
        if key in active:
            continue
        assert due.due_ms is not None
        days = None if due.last_ms is None else (now_ms - due.last_ms) // 86_400_000
        last = "never inspected" if days is None else f"last inspected {days} d ago"
        out.append(
            AlertTransition(
                transition="raised",
                key=key,
                rule=POINT_RULE,
                severity=point_severity,
                building=point.building,
                floor=point.floor,
                device=None,
                ts_ms=due.due_ms,
                reason=f"inspection of {point.id} ({point.kind}, {point.interval}) is overdue: {last}",
                grid=grids.get(point.building),
            )
        )
    hazard_severity = Severity.parse(config.hazard_overdue_severity)
    for hazard in hazards:
        if hazard.state not in DEADLINE_STATES or hazard.deadline_ms is None or now_ms < hazard.deadline_ms:
            continue
        key = hazard_key(hazard.id)
        overdue.add(key)
        if key in active:
            continue
        out.append(
            AlertTransition(
                transition="raised",
                key=key,
                rule=HAZARD_RULE,
                severity=hazard_severity,
                building=hazard.building,
                floor=hazard.floor,
                device=None,
                ts_ms=hazard.deadline_ms,
                reason=f"hazard {hazard.id} ({hazard.category}) not rectified by its deadline"
                + (f" (assigned to {hazard.assignee})" if hazard.assignee else ""),
                grid=hazard.grid,
            )
        )
    for key in sorted(set(active) - overdue):
        rule = key.partition(":")[0]
        out.append(
            AlertTransition(
                transition="cleared",
                key=key,
                rule=rule,
                severity=point_severity if rule == POINT_RULE else hazard_severity,
                building=active[key],
                floor=None,
                device=None,
                ts_ms=now_ms,
                reason="inspected" if rule == POINT_RULE else "rectified",
            )
        )
    return out
