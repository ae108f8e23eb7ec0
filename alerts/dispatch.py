"""Which micro fire station goes to an incident: a pure choice over the stations, the building's location, who is on
duty and which stations are already committed; a :class:`Decision` with its reason out.

The "15-minute rescue circle" made concrete: the travel time is the straight-line (great-circle) distance at the
configured speed.  Straight lines under-estimate streets, which is why the speed is a setting: a district calibrates
it from its drills.

Preference, in order: a station that covers the building (by building, else by grid), has someone on duty and is not
committed to another open incident; among those the nearest.  When no covering station is available, the nearest
covering one is sent anyway and the reason says why it was not "available": a fire must get someone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

EARTH_RADIUS_M = 6_371_008.8
DEFAULT_TARGET_S = 180  # the micro fire station's 3 minutes from call to on scene


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    lat: float
    lon: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Equipment:
    name: str
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Station:
    """A micro fire station: ``members`` are roster names, ``leader`` one of the roster (paged when it is late)."""

    id: str
    name: str
    location: Location | None
    grids: tuple[str, ...] = ()
    buildings: tuple[str, ...] = ()
    members: tuple[str, ...] = ()
    equipment: tuple[Equipment, ...] = ()
    on_scene_target_s: int = DEFAULT_TARGET_S
    leader: str | None = None

    def covers(self, *, building: str, grid: str | None) -> bool:
        return building in self.buildings or (grid is not None and grid in self.grids)


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchPlan:
    """The stations, the buildings' locations and the travel speed (km/h) the choice reads."""

    stations: tuple[Station, ...] = ()
    locations: Mapping[str, Location] | None = None
    travel_speed_kmh: float = 15.0

    def station(self, station_id: str) -> Station | None:
        return next((s for s in self.stations if s.id == station_id), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """Who goes: ``station`` (None when the operator named members), the members paged, why, and how far."""

    station: str | None
    members: tuple[str, ...]
    reason: str
    distance_m: int | None
    eta_s: int | None
    on_scene_target_s: int


class DispatchError(Exception):
    """Base class of what makes a dispatch impossible."""


class UnknownStation(DispatchError):
    def __init__(self, station_id: str) -> None:
        super().__init__(f"no station {station_id!r}")
        self.station_id = station_id


class UnknownMembers(DispatchError):
    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(f"not on the roster: {', '.join(names)}")
        self.names = tuple(names)


class NoStationCovers(DispatchError):
    def __init__(self, building: str) -> None:
        super().__init__(f"no station covers building {building!r}: dispatch a station or members by name")
        self.building = building


def distance_m(a: Location, b: Location) -> float:
    """Great-circle distance (haversine) in metres."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def travel_s(metres: float, *, speed_kmh: float) -> int:
    return round(metres / (speed_kmh / 3.6))


def choose(
    plan: DispatchPlan,
    *,
    building: str,
    grid: str | None,
    on_duty: Callable[[str], bool],
    roster: Collection[str],
    committed: Mapping[str, int],
    station: str | None = None,
    members: Sequence[str] | None = None,
) -> Decision:
    """``on_duty(name)``: whether a roster member is on duty now; ``committed``: station id -> the open incident it is
    committed to (this incident's own station excluded by the caller).  ``station`` or ``members``: the operator's
    choice; neither: the nearest available covering station."""
    where = (plan.locations or {}).get(building)
    if members:
        unknown = [n for n in members if n not in roster]
        if unknown:
            raise UnknownMembers(unknown)
        names = tuple(dict.fromkeys(members))
        home = next((s for s in plan.stations if set(names) <= set(s.members)), None)
        metres = _metres(home, where)
        return Decision(
            station=None,
            members=names,
            reason="members named by the operator",
            distance_m=metres,
            eta_s=_eta(plan, metres),
            on_scene_target_s=home.on_scene_target_s if home else DEFAULT_TARGET_S,
        )
    if station is not None:
        chosen = plan.station(station)
        if chosen is None:
            raise UnknownStation(station)
        metres = _metres(chosen, where)
        reason = f"station {chosen.id} chosen by the operator"
        if station in committed:
            reason += f" (also committed to incident {committed[station]})"
        return _decision(plan, chosen, metres, on_duty, reason)
    covering = [s for s in plan.stations if s.covers(building=building, grid=grid)]
    if not covering:
        raise NoStationCovers(building)

    def rank(s: Station) -> tuple[float, str]:
        metres = _metres(s, where)
        return (math.inf if metres is None else metres, s.id)

    covering.sort(key=rank)
    available = [s for s in covering if s.id not in committed and any(on_duty(n) for n in s.members)]
    if available:
        chosen = available[0]
        metres = _metres(chosen, where)
        skipped = [s for s in covering[: covering.index(chosen)]]
        reason = f"nearest available on-duty station covering {building}: {chosen.id}" + _how_far(plan, metres)
        if skipped:
            reason += "; nearer but not available: " + ", ".join(_why_not(s, committed) for s in skipped)
        return _decision(plan, chosen, metres, on_duty, reason)
    chosen = covering[0]
    metres = _metres(chosen, where)
    reason = (
        f"no covering station is available ({', '.join(_why_not(s, committed) for s in covering)});"
        f" sending the nearest covering station {chosen.id}" + _how_far(plan, metres)
    )
    return _decision(plan, chosen, metres, on_duty, reason)


def on_duty_members(station: Station, on_duty: Callable[[str], bool]) -> tuple[str, ...]:
    """The station's members on duty now, or all of them when nobody is: a fire must reach someone."""
    duty = tuple(n for n in station.members if on_duty(n))
    return duty or station.members


def _decision(
    plan: DispatchPlan, chosen: Station, metres: int | None, on_duty: Callable[[str], bool], reason: str
) -> Decision:
    return Decision(
        station=chosen.id,
        members=on_duty_members(chosen, on_duty),
        reason=reason,
        distance_m=metres,
        eta_s=_eta(plan, metres),
        on_scene_target_s=chosen.on_scene_target_s,
    )


def _metres(station: Station | None, where: Location | None) -> int | None:
    if station is None or station.location is None or where is None:
        return None
    return round(distance_m(station.location, where))


def _eta(plan: DispatchPlan, metres: int | None) -> int | None:
    return None if metres is None else travel_s(metres, speed_kmh=plan.travel_speed_kmh)


def _how_far(plan: DispatchPlan, metres: int | None) -> str:
    if metres is None:
        return " (distance unknown: the building or the station has no location)"
    eta = travel_s(metres, speed_kmh=plan.travel_speed_kmh)
    return f" ({metres} m, about {eta} s at {plan.travel_speed_kmh:g} km/h)"


def _why_not(station: Station, committed: Mapping[str, int]) -> str:
    if station.id in committed:
        return f"{station.id} is committed to incident {committed[station.id]}"
    return f"{station.id} has nobody on duty"
