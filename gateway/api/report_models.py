"""Request and response models of ``/api/v1/reports/*``: the figures of :mod:`alerts.figures` as the API shows them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from common.ids import Ident
from gateway.api.models import Model, Query, Since

Month = Annotated[str, StringConstraints(pattern=r"^2\d{3}-(0[1-9]|1[0-2])$")]  # 2000-01 .. 2999-12


class ReportQuery(Query):
    from_: Since | None = Field(
        default=None, alias="from", description="start (epoch ms or RFC 3339); default: the start of this month"
    )
    to: Since | None = Field(default=None, description="end, exclusive; default: now")
    grid: Ident | None = None
    building: Ident | None = None
    station: Ident | None = Field(default=None, description="incidents the station was dispatched to")
    by: Literal["day", "week", "month", "grid", "building", "station"] | None = Field(
        default=None, description="also give the figures of each day, week, month, grid, building or station"
    )


class DeviceReportQuery(ReportQuery):
    pass


class MonthlyQuery(Query):
    month: Month = Field(description="the calendar month, e.g. 2026-11")
    grid: Ident | None = None
    lang: Literal["zh", "en"] = "zh"
    format: Literal["json", "html", "pdf", "xlsx", "csv"] = "json"


class AuditQuery(Query):
    from_: Since = Field(alias="from", description="start (epoch ms or RFC 3339)")
    to: Since = Field(description="end, exclusive")
    grid: Ident | None = None
    building: Ident | None = None
    format: Literal["csv", "json"] = "csv"


class PeriodOut(Model):
    from_ms: int
    to_ms: int
    timezone: str


class DurationsOut(Model):
    count: int
    median_s: float | None
    p90_s: float | None
    max_s: float | None


class ShareOut(Model):
    count: int
    of: int
    ratio: float | None


class ResponseFiguresOut(Model):
    incidents: int = Field(description="real incidents raised in the period (drills and tests apart)")
    by_severity: dict[str, int]
    acknowledge: DurationsOut
    dispatch: DurationsOut
    on_scene: DurationsOut
    resolve: DurationsOut
    acknowledged_within_timeout: ShareOut
    on_scene_within_target: ShareOut
    escalations: int
    escalated_incidents: int
    drills: int
    tests: int = Field(description="incidents of maintenance-window (test) alerts only")


class ResponseGroup(Model):
    key: str
    figures: ResponseFiguresOut


class ResponseReport(Model):
    period: PeriodOut
    ack_timeout_s: float
    on_scene_target_s: dict[str, float] = Field(description="each station's target; `*` for the default")
    figures: ResponseFiguresOut
    groups: list[ResponseGroup] = Field(default_factory=list)


class CountRateOut(Model):
    key: str
    count: int
    devices: int
    rate_per_100_per_month: float | None
    building: str | None = None
    building_name: str | None = None
    grid: str | None = None
    rule: str | None = None


class FalseAlarmGroup(Model):
    key: str
    false_alarms: int
    alarms: int
    devices: int
    rate_per_100_per_month: float | None
    by_cause: dict[str, int]


class FalseAlarmReport(Model):
    period: PeriodOut
    alarms: int
    false_alarms: int
    devices: int
    months: float
    rate_per_100_per_month: float | None
    by_cause: dict[str, int]
    by_building: list[CountRateOut]
    by_device: list[CountRateOut]
    top_detectors: list[CountRateOut]
    drills: int
    tests: int
    groups: list[FalseAlarmGroup] = Field(default_factory=list)


class DeviceFiguresOut(Model):
    devices: int
    availability: float | None
    offline_events: int
    low_battery_devices: int
    faults: int
    time_to_repair: DurationsOut
    extinguishers: int
    extinguishers_in_service: int
    extinguishers_in_service_ratio: float | None
    tests: int


class DeviceGroup(Model):
    key: str
    figures: DeviceFiguresOut


class DeviceReport(Model):
    period: PeriodOut
    figures: DeviceFiguresOut
    groups: list[DeviceGroup] = Field(default_factory=list)


class DayCount(Model):
    day: str
    incidents: int


class MonthlySummary(Model):
    month: str
    grid: str | None
    lang: Literal["zh", "en"]
    period: PeriodOut
    figures: dict[str, float | int | None] = Field(
        description="the summary page's figures by key (shares as fractions)"
    )
    response: ResponseFiguresOut
    per_day: list[DayCount]


class StripFigures(Model):
    from_ms: int
    to_ms: int
    incidents: int
    ack_median_s: float | None
    on_scene_within_target: float | None
    on_scene_counted: int
    false_alarm_rate: float | None = Field(description="false alarms per 100 devices per month")
    false_alarms: int
    availability: float | None
    extinguishers_in_service: float | None


class FiguresStrip(Model):
    today: StripFigures
    month: StripFigures
    devices_online: int = Field(description="devices online now (presence)")
    devices_total: int
