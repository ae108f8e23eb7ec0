"""Response figures, false alarms and device health: pure functions over frozen records and a period.

Nothing here reads a database or a clock: the store's reader (:mod:`alerts.store.reports`) hands over what happened
in a period as :class:`IncidentFacts` and :class:`AlertFacts`, and every figure of the API, the monthly report and
the dashboard strip is computed here from them, so any figure can be recomputed by hand from the audit trail.

Definitions (the tests compute the same numbers independently from these words):

* an incident counts in the period it was *raised* in (``raised_ms`` in ``[start, end)``); an alert likewise;
* drills (``drill``) and maintenance-window alerts (``test``: raised under a window, a silence or a drill) are
  counted apart and never enter the real figures; an incident is ``test`` when every one of its alerts is;
* a duration is from the incident being raised to the first time it was acknowledged, dispatched, on scene or
  resolved; its median is the middle value (the mean of the two middle ones for an even count) and its p90 the
  nearest-rank 90th percentile (the value at rank ``ceil(0.9 * n)`` of the sorted values);
* "acknowledged within the timeout" is over every real incident (one never acknowledged is not within); "on scene
  within target" is over the incidents a station was dispatched to, against that station's target;
* a false-alarm rate is per 100 devices per month: false alarms * 100 / devices / months, where months is the
  share of each calendar month (in the report's time zone) the period covers, summed;
* availability is the share of the period a device was not under an absence alert (the presence rule's record of
  it being silent or offline); a fault's time to repair is from its alert being raised to its condition clearing
  (or the alert being resolved, whichever is first); an extinguisher is in service at the period's end unless an
  extinguisher alert was open then.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

from rules.types import Severity

Bucket = Literal["day", "week", "month"]
GroupBy = Literal["day", "week", "month", "grid", "building", "station"]
GROUPINGS: Final[tuple[str, ...]] = ("day", "week", "month", "grid", "building", "station")
DEFAULT_TIMEZONE: Final = "Asia/Shanghai"
DEFAULT_ON_SCENE_TARGET_S: Final = 180.0

# The shipped rules whose alerts describe a device's health rather than a fire (rules/defaults.yaml).
OFFLINE_RULES: Final = frozenset({"device-absent"})
BATTERY_RULES: Final = frozenset({"battery-low"})
FAULT_RULES: Final = frozenset({"device-fault", "tamper", "tamper-event"})
EXTINGUISHER_RULES: Final = frozenset({"extinguisher-missing", "extinguisher-obstructed", "extinguisher-pressure"})

_T = TypeVar("_T")


# --- inputs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    """``[start_ms, end_ms)``, with the time zone its days, weeks (Monday first) and months are cut in."""

    start_ms: int
    end_ms: int
    timezone: str = DEFAULT_TIMEZONE

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError("a period must end after it starts")

    @property
    def length_ms(self) -> int:
        return self.end_ms - self.start_ms

    def contains(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms

    @classmethod
    def month(cls, month: str, *, timezone: str = DEFAULT_TIMEZONE) -> Period:
        """``"2026-11"``: that calendar month in ``timezone``."""
        year, mon = (int(p) for p in month.split("-", 1))
        zone = ZoneInfo(timezone)
        start = datetime(year, mon, 1, tzinfo=zone)
        end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=zone)
        return cls(start_ms=_ms(start), end_ms=_ms(end), timezone=timezone)

    @classmethod
    def day_of(cls, ts_ms: int, *, timezone: str = DEFAULT_TIMEZONE) -> Period:
        start = bucket_start(ts_ms, "day", timezone)
        return cls(start_ms=start, end_ms=_next_bucket(start, "day", timezone), timezone=timezone)

    @classmethod
    def month_of(cls, ts_ms: int, *, timezone: str = DEFAULT_TIMEZONE) -> Period:
        start = bucket_start(ts_ms, "month", timezone)
        return cls(start_ms=start, end_ms=_next_bucket(start, "month", timezone), timezone=timezone)


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentFacts:
    """One incident as the figures see it: when it was raised and when each step first happened."""

    id: int
    building: str
    grid: str | None
    station: str | None
    drill: bool
    test: bool
    severity: Severity
    raised_ms: int
    acknowledged_ms: int | None = None
    dispatched_ms: int | None = None
    on_scene_ms: int | None = None
    resolved_ms: int | None = None
    cause: str | None = None
    escalations: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertFacts:
    """One alert: its rule, device, cause and when it was raised, its condition cleared and it was resolved."""

    id: int
    incident_id: int
    building: str
    grid: str | None
    device: str | None
    rule: str
    severity: Severity
    drill: bool
    test: bool
    raised_ms: int
    cleared_ms: int | None = None
    resolved_ms: int | None = None
    cause: str | None = None

    @property
    def ended_ms(self) -> int | None:
        """When what it reported stopped: its condition cleared or it was resolved, whichever came first."""
        ends = [t for t in (self.cleared_ms, self.resolved_ms) if t is not None]
        return min(ends) if ends else None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceFacts:
    id: str
    building: str
    grid: str | None
    kind: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Targets:
    """What the figures are judged against: the acknowledge timeout and each station's on-scene target."""

    ack_timeout_s: float = 60.0
    on_scene_target_s: Mapping[str, float] = field(default_factory=dict)
    default_on_scene_target_s: float = DEFAULT_ON_SCENE_TARGET_S

    def target_s(self, station: str | None) -> float:
        if station is None:
            return self.default_on_scene_target_s
        return self.on_scene_target_s.get(station, self.default_on_scene_target_s)


# --- outputs -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Durations:
    """Seconds: how many, the median, the nearest-rank p90 and the longest (None when there are none)."""

    count: int
    median_s: float | None
    p90_s: float | None
    max_s: float | None

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Durations:
        values = sorted(seconds)
        if not values:
            return cls(count=0, median_s=None, p90_s=None, max_s=None)
        return cls(
            count=len(values),
            median_s=float(statistics.median(values)),
            p90_s=float(values[max(1, math.ceil(0.9 * len(values))) - 1]),
            max_s=float(values[-1]),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Share:
    """``count`` of ``of`` (``ratio`` None when ``of`` is 0)."""

    count: int
    of: int

    @property
    def ratio(self) -> float | None:
        return None if self.of == 0 else self.count / self.of


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseFigures:
    incidents: int
    by_severity: Mapping[str, int]
    acknowledge: Durations
    dispatch: Durations
    on_scene: Durations
    resolve: Durations
    acknowledged_within_timeout: Share
    on_scene_within_target: Share
    escalations: int
    escalated_incidents: int
    drills: int
    tests: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Group(Generic[_T]):
    key: str
    figures: _T


@dataclass(frozen=True, slots=True, kw_only=True)
class CountRate:
    key: str
    count: int
    devices: int
    rate_per_100_per_month: float | None
    building: str | None = None
    grid: str | None = None
    rule: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FalseAlarmFigures:
    alarms: int
    false_alarms: int
    devices: int
    months: float
    rate_per_100_per_month: float | None
    by_cause: Mapping[str, int]
    by_building: tuple[CountRate, ...]
    by_device: tuple[CountRate, ...]
    top_detectors: tuple[CountRate, ...]
    drills: int
    tests: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceHealthFigures:
    devices: int
    availability: float | None
    offline_events: int
    low_battery_devices: int
    faults: int
    time_to_repair: Durations
    extinguishers: int
    extinguishers_in_service: int
    tests: int

    @property
    def extinguishers_in_service_ratio(self) -> float | None:
        return None if self.extinguishers == 0 else self.extinguishers_in_service / self.extinguishers


# --- periods -----------------------------------------------------------------------------------------------------


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def bucket_start(ts_ms: int, bucket: Bucket, timezone: str = DEFAULT_TIMEZONE) -> int:
    """The start of the day, week (Monday) or month ``ts_ms`` falls in, in ``timezone``."""
    local = datetime.fromtimestamp(ts_ms / 1000, tz=ZoneInfo(timezone))
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if bucket == "week":
        # Back to Monday on the wall clock, then read in the zone again (a DST change may lie between).
        day = (day.replace(tzinfo=None) - timedelta(days=day.weekday())).replace(tzinfo=ZoneInfo(timezone))
    elif bucket == "month":
        day = day.replace(day=1)
    return _ms(day)


def _next_bucket(start_ms: int, bucket: Bucket, timezone: str) -> int:
    zone = ZoneInfo(timezone)
    local = datetime.fromtimestamp(start_ms / 1000, tz=zone)
    if bucket == "month":
        nxt = datetime(local.year + local.month // 12, local.month % 12 + 1, 1, tzinfo=zone)
    else:
        days = 7 if bucket == "week" else 1
        naive = local.replace(tzinfo=None) + timedelta(days=days)
        nxt = naive.replace(tzinfo=zone)
    return _ms(nxt)


def bucket_label(ts_ms: int, bucket: Bucket, timezone: str = DEFAULT_TIMEZONE) -> str:
    """``2026-11-03`` (day), ``2026-W45`` (ISO week), ``2026-11`` (month)."""
    local = datetime.fromtimestamp(bucket_start(ts_ms, bucket, timezone) / 1000, tz=ZoneInfo(timezone))
    if bucket == "day":
        return local.strftime("%Y-%m-%d")
    if bucket == "week":
        year, week, _ = local.isocalendar()
        return f"{year}-W{week:02d}"
    return local.strftime("%Y-%m")


def months_in(period: Period) -> float:
    """How many calendar months the period covers (a whole month is 1.0; a day of November is 1/30)."""
    total = 0.0
    start = bucket_start(period.start_ms, "month", period.timezone)
    while start < period.end_ms:
        end = _next_bucket(start, "month", period.timezone)
        overlap = min(end, period.end_ms) - max(start, period.start_ms)
        total += overlap / (end - start)
        start = end
    return total


def _group_key(bucket_or_field: GroupBy, timezone: str) -> Callable[[str | None, str | None, str, int], str]:
    def key(grid: str | None, station: str | None, building: str, ts_ms: int) -> str:
        if bucket_or_field == "grid":
            return grid or "-"
        if bucket_or_field == "station":
            return station or "-"
        if bucket_or_field == "building":
            return building
        return bucket_label(ts_ms, bucket_or_field, timezone)

    return key


def _split(items: Iterable[_T], key: Callable[[_T], str]) -> dict[str, list[_T]]:
    out: dict[str, list[_T]] = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return dict(sorted(out.items()))


# --- response ----------------------------------------------------------------------------------------------------


def _seconds(start_ms: int, end_ms: int | None) -> float | None:
    return None if end_ms is None else max(0, end_ms - start_ms) / 1000


def response(incidents: Sequence[IncidentFacts], period: Period, targets: Targets) -> ResponseFigures:
    """The response figures of the incidents raised in ``period`` (see the module docstring)."""
    inside = [i for i in incidents if period.contains(i.raised_ms)]
    real = [i for i in inside if not i.drill and not i.test]

    def durations(step: Callable[[IncidentFacts], int | None]) -> Durations:
        return Durations.of(s for i in real if (s := _seconds(i.raised_ms, step(i))) is not None)

    ack_ok = sum(
        1 for i in real if (s := _seconds(i.raised_ms, i.acknowledged_ms)) is not None and s <= targets.ack_timeout_s
    )
    sent = [i for i in real if i.station is not None and i.dispatched_ms is not None]
    scene_ok = sum(
        1 for i in sent if (s := _seconds(i.raised_ms, i.on_scene_ms)) is not None and s <= targets.target_s(i.station)
    )
    severities = Counter(i.severity.label for i in real)
    return ResponseFigures(
        incidents=len(real),
        by_severity={s.label: severities.get(s.label, 0) for s in sorted(Severity, reverse=True)},
        acknowledge=durations(lambda i: i.acknowledged_ms),
        dispatch=durations(lambda i: i.dispatched_ms),
        on_scene=durations(lambda i: i.on_scene_ms),
        resolve=durations(lambda i: i.resolved_ms),
        acknowledged_within_timeout=Share(count=ack_ok, of=len(real)),
        on_scene_within_target=Share(count=scene_ok, of=len(sent)),
        escalations=sum(i.escalations for i in real),
        escalated_incidents=sum(1 for i in real if i.escalations > 0),
        drills=sum(1 for i in inside if i.drill),
        tests=sum(1 for i in inside if i.test and not i.drill),
    )


def response_by(
    incidents: Sequence[IncidentFacts], period: Period, targets: Targets, by: GroupBy
) -> list[Group[ResponseFigures]]:
    """The response figures of each day, week, month, grid, building or station (the groups that have incidents)."""
    key = _group_key(by, period.timezone)
    inside = [i for i in incidents if period.contains(i.raised_ms)]
    groups = _split(inside, lambda i: key(i.grid, i.station, i.building, i.raised_ms))
    return [Group(key=k, figures=response(v, period, targets)) for k, v in groups.items()]


# --- false alarms ------------------------------------------------------------------------------------------------


def _rate(count: int, devices: int, months: float) -> float | None:
    if devices == 0 or months <= 0:
        return None
    return count * 100 / devices / months


def false_alarms(
    alerts: Sequence[AlertFacts], devices: Sequence[DeviceFacts], period: Period, *, top: int = 10
) -> FalseAlarmFigures:
    """Alarms are the fire and supervisory alerts raised in the period; a false alarm is one resolved with the cause
    ``false_alarm``.  ``devices``: the registry in scope (the denominators)."""
    inside = [a for a in alerts if period.contains(a.raised_ms)]
    real = [a for a in inside if not a.drill and not a.test and a.severity >= Severity.SUPERVISORY]
    false = [a for a in real if a.cause == "false_alarm"]
    months = months_in(period)
    per_building = Counter(d.building for d in devices)
    grid_of = {d.building: d.grid for d in devices}
    counts = Counter(a.building for a in false)
    by_building = tuple(
        CountRate(
            key=b,
            count=n,
            devices=per_building.get(b, 0),
            rate_per_100_per_month=_rate(n, per_building.get(b, 0), months),
            building=b,
            grid=grid_of.get(b),
        )
        for b, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    device_rules: dict[str, Counter[str]] = defaultdict(Counter)
    device_building: dict[str, tuple[str, str | None]] = {}
    for a in false:
        if a.device is not None:
            device_rules[a.device][a.rule] += 1
            device_building[a.device] = (a.building, a.grid)
    by_device = tuple(
        CountRate(
            key=d,
            count=sum(rules.values()),
            devices=1,
            rate_per_100_per_month=_rate(sum(rules.values()), 1, months),
            building=device_building[d][0],
            grid=device_building[d][1],
            rule=rules.most_common(1)[0][0],
        )
        for d, rules in sorted(device_rules.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    )
    causes = Counter(a.cause or "unresolved" for a in real)
    return FalseAlarmFigures(
        alarms=len(real),
        false_alarms=len(false),
        devices=len(devices),
        months=months,
        rate_per_100_per_month=_rate(len(false), len(devices), months),
        by_cause=dict(sorted(causes.items())),
        by_building=by_building,
        by_device=by_device,
        top_detectors=by_device[:top],
        drills=sum(1 for a in inside if a.drill),
        tests=sum(1 for a in inside if a.test and not a.drill),
    )


# --- device health -----------------------------------------------------------------------------------------------


def _overlap(period: Period, start_ms: int, end_ms: int | None) -> int:
    end = period.end_ms if end_ms is None else min(end_ms, period.end_ms)
    return max(0, end - max(start_ms, period.start_ms))


def device_health(
    alerts: Sequence[AlertFacts],
    devices: Sequence[DeviceFacts],
    period: Period,
) -> DeviceHealthFigures:
    """``alerts``: every alert whose life overlaps the period (not only those raised in it: a device offline since
    last month is offline this month too)."""
    known = {d.id for d in devices}
    real = [a for a in alerts if not a.test and not a.drill and a.device in known]
    offline_ms: dict[str, int] = defaultdict(int)
    offline_events = 0
    for a in real:
        if a.rule in OFFLINE_RULES and a.raised_ms < period.end_ms:
            spent = _overlap(period, a.raised_ms, a.ended_ms)
            if spent > 0 or period.contains(a.raised_ms):
                offline_ms[a.device or ""] += spent
                offline_events += period.contains(a.raised_ms)
    availability = (
        None
        if not devices
        else sum(1 - min(offline_ms.get(d.id, 0), period.length_ms) / period.length_ms for d in devices) / len(devices)
    )
    low_battery = {
        a.device
        for a in real
        if a.rule in BATTERY_RULES and a.raised_ms < period.end_ms and _overlap(period, a.raised_ms, a.ended_ms) > 0
    }
    faults = [a for a in real if a.rule in FAULT_RULES and period.contains(a.raised_ms)]
    repair = Durations.of(s for a in faults if (s := _seconds(a.raised_ms, a.ended_ms)) is not None)
    extinguishers = {d.id for d in devices if d.kind == "extinguisher"}
    out_of_service = {
        a.device
        for a in real
        if a.rule in EXTINGUISHER_RULES
        and a.device in extinguishers
        and a.raised_ms < period.end_ms
        and (a.ended_ms is None or a.ended_ms >= period.end_ms)
    }
    return DeviceHealthFigures(
        devices=len(devices),
        availability=availability,
        offline_events=offline_events,
        low_battery_devices=len(low_battery),
        faults=len(faults),
        time_to_repair=repair,
        extinguishers=len(extinguishers),
        extinguishers_in_service=len(extinguishers - out_of_service),
        tests=sum(1 for a in alerts if a.test and period.contains(a.raised_ms)),
    )


def device_health_by(
    alerts: Sequence[AlertFacts], devices: Sequence[DeviceFacts], period: Period, by: Literal["grid", "building"]
) -> list[Group[DeviceHealthFigures]]:
    groups = _split(devices, (lambda d: d.grid or "-") if by == "grid" else (lambda d: d.building))
    out = []
    for key, members in groups.items():
        ids = {d.id for d in members}
        out.append(Group(key=key, figures=device_health([a for a in alerts if a.device in ids], members, period)))
    return out


def sub_periods(period: Period, bucket: Bucket) -> list[tuple[str, Period]]:
    """The days, weeks or months of ``period`` (the first and last cut to it), each with its label."""
    out = []
    start = bucket_start(period.start_ms, bucket, period.timezone)
    while start < period.end_ms:
        end = _next_bucket(start, bucket, period.timezone)
        part = Period(start_ms=max(start, period.start_ms), end_ms=min(end, period.end_ms), timezone=period.timezone)
        out.append((bucket_label(start, bucket, period.timezone), part))
        start = end
    return out


def false_alarms_by(
    alerts: Sequence[AlertFacts], devices: Sequence[DeviceFacts], period: Period, by: GroupBy
) -> list[Group[FalseAlarmFigures]]:
    """False alarms of each day, week or month (every one of the period, with all ``devices``), or of each grid or
    building (its own devices and alerts); ``station`` groups nothing here (a station's buildings are config)."""
    if by in ("day", "week", "month"):
        return [Group(key=k, figures=false_alarms(alerts, devices, p)) for k, p in sub_periods(period, by)]
    if by not in ("grid", "building"):
        return []
    return [
        Group(key=key, figures=false_alarms(alerts_of, devices_of, period))
        for key, devices_of, alerts_of in _by_place(alerts, devices, by)
    ]


def device_health_over(
    alerts: Sequence[AlertFacts], devices: Sequence[DeviceFacts], period: Period, by: GroupBy
) -> list[Group[DeviceHealthFigures]]:
    """Device health of each day, week or month of the period, or of each grid or building."""
    if by in ("day", "week", "month"):
        return [Group(key=k, figures=device_health(alerts, devices, p)) for k, p in sub_periods(period, by)]
    if by in ("grid", "building"):
        return device_health_by(alerts, devices, period, by)
    return []


def _by_place(
    alerts: Sequence[AlertFacts], devices: Sequence[DeviceFacts], by: Literal["grid", "building"]
) -> list[tuple[str, list[DeviceFacts], list[AlertFacts]]]:
    def place_of_device(d: DeviceFacts) -> str:
        return (d.grid or "-") if by == "grid" else d.building

    def place_of_alert(a: AlertFacts) -> str:
        return (a.grid or "-") if by == "grid" else a.building

    devices_at = _split(devices, place_of_device)
    alerts_at = _split(alerts, place_of_alert)
    keys = sorted(set(devices_at) | set(alerts_at))
    return [(k, devices_at.get(k, []), alerts_at.get(k, [])) for k in keys]


def counts_by_day(incidents: Sequence[IncidentFacts], period: Period) -> list[tuple[str, int]]:
    """Real incidents of each day of the period (every day, zero included): the report's first chart."""
    per_day = Counter(
        bucket_label(i.raised_ms, "day", period.timezone)
        for i in incidents
        if period.contains(i.raised_ms) and not i.drill and not i.test
    )
    out = []
    day = bucket_start(period.start_ms, "day", period.timezone)
    while day < period.end_ms:
        label = bucket_label(day, "day", period.timezone)
        out.append((label, per_day.get(label, 0)))
        day = _next_bucket(day, "day", period.timezone)
    return out
