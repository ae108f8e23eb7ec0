"""Pure: the month's inspection figures (compliance per grid, open and overdue hazards, time to rectify), from
records and a clock.  The API's ``/inspections/compliance`` and the dashboard show them; a report takes the same
function, so a figure means one thing wherever it is printed."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from alerts.inspections.config import InspectionPoint
from alerts.inspections.deadlines import PointDue
from alerts.inspections.records import DEADLINE_STATES, HazardRecord


@dataclass(frozen=True, slots=True)
class GridFigures:
    grid: str
    points: int
    inspected: int  # inspected in the month, or a monitored extinguisher healthy now
    overdue: int

    @property
    def rate(self) -> float:
        return 1.0 if self.points == 0 else round(self.inspected / self.points, 4)


@dataclass(frozen=True, slots=True)
class MonthFigures:
    grids: tuple[GridFigures, ...]
    open_hazards: int
    overdue_hazards: int
    rectified: int  # hazards rectified in the month
    mean_hours_to_rectify: float | None  # from report to rectification, over those


def month_figures(
    *,
    points: Iterable[InspectionPoint],
    grid_of: Callable[[str], str | None],
    inspected: set[str],
    dues: Mapping[str, PointDue],
    hazards: Iterable[HazardRecord],
    start_ms: int,
    end_ms: int,
    now_ms: int,
) -> MonthFigures:
    """``inspected``: ids of points with an inspection in [start_ms, end_ms); ``dues``: each point's deadline now."""
    counts: dict[str, list[int]] = {}
    for point in points:
        grid = grid_of(point.building) or "-"
        due = dues.get(point.id)
        row = counts.setdefault(grid, [0, 0, 0])
        row[0] += 1
        row[1] += int(point.id in inspected or (due is not None and due.due_ms is None))
        row[2] += int(due is not None and due.overdue(now_ms))
    seen = list(hazards)
    open_ = [h for h in seen if h.open]
    overdue = [h for h in open_ if h.state in DEADLINE_STATES and h.deadline_ms is not None and now_ms >= h.deadline_ms]
    hours = [
        (h.rectified_ms - h.reported_ms) / 3_600_000
        for h in seen
        if h.rectified_ms is not None and start_ms <= h.rectified_ms < end_ms
    ]
    return MonthFigures(
        grids=tuple(GridFigures(grid, *row) for grid, row in sorted(counts.items())),
        open_hazards=len(open_),
        overdue_hazards=len(overdue),
        rectified=len(hours),
        mean_hours_to_rectify=round(sum(hours) / len(hours), 2) if hours else None,
    )
