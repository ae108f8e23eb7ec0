"""Who hears about an alert: routes (by severity, grid, building) pick escalation tiers; tiers pick roster members
by role or name, limited to members covering the alert's grid/building and on duty at that moment.

Pure functions of the config and a clock value: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from alerts.config import DAYS, Member, NotifyConfig, OnDuty, Route
from rules.types import Severity


@dataclass(frozen=True, slots=True)
class Recipient:
    name: str
    phone: str
    lang: str
    role: str


def _covers(member: Member, *, grid: str | None, building: str) -> bool:
    if member.buildings and building in member.buildings:
        return True
    if member.grids:
        return grid is not None and grid in member.grids and not member.buildings
    return not member.buildings  # no grids and no buildings: the whole community


def _in_window(window: OnDuty, local: datetime) -> bool:
    now = local.time()
    day = DAYS[local.weekday()]
    prev_day = DAYS[(local.weekday() - 1) % 7]
    if window.start <= window.end:
        return day in window.days and window.start <= now <= window.end
    # Spans midnight: the evening part belongs to today, the early-morning part to the day it started on.
    return (day in window.days and now >= window.start) or (prev_day in window.days and now <= window.end)


def on_duty(member: Member, *, now_ms: int, default_tz: str) -> bool:
    if not member.on_duty:
        return True
    local = datetime.fromtimestamp(now_ms / 1000, tz=UTC).astimezone(ZoneInfo(member.timezone or default_tz))
    return any(_in_window(w, local) for w in member.on_duty)


def tier_count(config: NotifyConfig, *, severity: Severity, grid: str | None, building: str) -> int:
    routes = _matching_routes(config, severity=severity, grid=grid, building=building)
    return max((len(r.tiers) for r in routes), default=0)


def ack_timeout_s(config: NotifyConfig, *, severity: Severity, grid: str | None, building: str) -> float | None:
    """How long an alert may stay unacknowledged before it escalates, or None: it does not.  The shortest of the
    matching routes' own ``ack_timeout_s``; fire falls back to ``notify.ack_timeout_s``, anything below fire
    escalates only where a route sets one."""
    own = [
        r.ack_timeout_s
        for r in _matching_routes(config, severity=severity, grid=grid, building=building)
        if r.ack_timeout_s is not None
    ]
    if own:
        return min(own)
    return config.ack_timeout_s if severity >= Severity.FIRE else None


def on_duty_by_name(config: NotifyConfig, *, now_ms: int) -> Callable[[str], bool]:
    """``on_duty(name)`` for the roster at ``now_ms`` (an unknown name is not on duty)."""
    members = {m.name: m for m in config.roster}

    def check(name: str) -> bool:
        member = members.get(name)
        return member is not None and on_duty(member, now_ms=now_ms, default_tz=config.timezone)

    return check


def by_names(config: NotifyConfig, names: Iterable[str]) -> list[Recipient]:
    """The roster members named (unknown names skipped), each once, in the order given."""
    members = {m.name: m for m in config.roster}
    out: dict[str, Recipient] = {}
    for name in names:
        m = members.get(name)
        if m is not None and name not in out:
            out[name] = Recipient(name=m.name, phone=m.phone, lang=m.lang, role=m.role)
    return list(out.values())


def duty_officers(config: NotifyConfig, *, grid: str | None, building: str) -> list[Recipient]:
    """The roster's ``duty_officer`` members covering the building."""
    return [
        Recipient(name=m.name, phone=m.phone, lang=m.lang, role=m.role)
        for m in config.roster
        if m.role == "duty_officer" and _covers(m, grid=grid, building=building)
    ]


def _matching_routes(config: NotifyConfig, *, severity: Severity, grid: str | None, building: str) -> list[Route]:
    out = []
    for route in config.routes:
        if severity < Severity.parse(route.min_severity):
            continue
        if route.grids and (grid is None or grid not in route.grids):
            continue
        if route.buildings and building not in route.buildings:
            continue
        out.append(route)
    return out


def recipients(
    config: NotifyConfig, *, tier: int, severity: Severity, grid: str | None, building: str, now_ms: int
) -> list[Recipient]:
    """The members of escalation tier ``tier`` for this alert, on duty now (or, if nobody in the tier is on duty,
    all of them: a fire must reach someone)."""
    wanted: list[Member] = []
    seen: set[str] = set()
    by_name = {m.name: m for m in config.roster}
    for route in _matching_routes(config, severity=severity, grid=grid, building=building):
        if tier >= len(route.tiers):
            continue
        spec = route.tiers[tier]
        for member in config.roster:
            if member.name in seen:
                continue
            if member.role in spec.roles and _covers(member, grid=grid, building=building):
                wanted.append(member)
                seen.add(member.name)
        for name in spec.members:
            if name not in seen and name in by_name:
                wanted.append(by_name[name])
                seen.add(name)
    duty = [m for m in wanted if on_duty(m, now_ms=now_ms, default_tz=config.timezone)]
    chosen = duty or wanted
    return [Recipient(name=m.name, phone=m.phone, lang=m.lang, role=m.role) for m in chosen]


def member_by_phone(config: NotifyConfig, phone: str) -> Member | None:
    for member in config.roster:
        if member.phone == phone:
            return member
    return None
