"""The monthly report's content, pure: a month's facts in, one frozen :class:`MonthlyReport` out, with the labels of
its language.  Every number in it comes from :mod:`alerts.figures`, so the report says what the API says."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal
from zoneinfo import ZoneInfo

from alerts import figures as f

Lang = Literal["zh", "en"]
FORMATS: Final[tuple[str, ...]] = ("html", "pdf", "xlsx", "csv")

# On-scene times are shown in buckets of 30 s up to 10 minutes; the last bucket takes everything longer.
BUCKET_S: Final = 30
BUCKETS: Final = 20

LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "zh": {
        "title": "微型消防站月度报告",
        "grid": "网格",
        "all_grids": "全部网格",
        "generated": "生成时间",
        "summary": "概要",
        "figure": "指标",
        "value": "数值",
        "incidents": "警情数（不含演练、测试）",
        "fire": "火警",
        "supervisory": "监管",
        "trouble": "故障",
        "warning": "预警",
        "ack_median": "确认用时中位数（秒）",
        "ack_p90": "确认用时 P90（秒）",
        "ack_within": "超时前确认比例",
        "dispatch_median": "派出用时中位数（秒）",
        "on_scene_median": "到场用时中位数（秒）",
        "on_scene_p90": "到场用时 P90（秒）",
        "on_scene_within": "目标时间内到场比例",
        "resolve_median": "处置完毕用时中位数（秒）",
        "escalations": "升级次数",
        "drills": "演练（另计）",
        "tests": "维护窗口测试（另计）",
        "alarms": "报警数",
        "false_alarms": "误报数",
        "false_rate": "误报率（每百台设备每月）",
        "devices": "设备数",
        "availability": "设备在线率",
        "low_battery": "低电量设备",
        "faults": "故障数",
        "repair_median": "修复用时中位数（秒）",
        "extinguishers": "灭火器数",
        "extinguishers_ok": "灭火器完好率",
        "per_day": "每日警情数",
        "day": "日期",
        "count": "数量",
        "distribution": "到场用时分布（目标 {target} 秒）",
        "seconds": "到场用时（秒）",
        "target": "目标",
        "false_by_building": "各楼栋误报",
        "building": "楼栋",
        "rate": "每百台每月",
        "availability_by_grid": "各网格设备在线率",
        "top_detectors": "误报最多的探测器（建议清洁或更换）",
        "device": "设备",
        "rule": "规则",
        "by_cause": "按原因",
        "cause": "原因",
        "incident_list": "警情明细",
        "id": "编号",
        "raised": "报警时间",
        "severity": "级别",
        "station": "微型消防站",
        "ack_s": "确认（秒）",
        "on_scene_s": "到场（秒）",
        "resolve_s": "处置（秒）",
        "none": "无",
    },
    "en": {
        "title": "Micro fire station monthly report",
        "grid": "Grid",
        "all_grids": "all grids",
        "generated": "Generated",
        "summary": "Summary",
        "figure": "Figure",
        "value": "Value",
        "incidents": "Incidents (drills and tests apart)",
        "fire": "fire",
        "supervisory": "supervisory",
        "trouble": "trouble",
        "warning": "warning",
        "ack_median": "Time to acknowledge, median (s)",
        "ack_p90": "Time to acknowledge, p90 (s)",
        "ack_within": "Acknowledged within the timeout",
        "dispatch_median": "Time to dispatch, median (s)",
        "on_scene_median": "Time to be on scene, median (s)",
        "on_scene_p90": "Time to be on scene, p90 (s)",
        "on_scene_within": "On scene within target",
        "resolve_median": "Time to resolve, median (s)",
        "escalations": "Escalations",
        "drills": "Drills (apart)",
        "tests": "Maintenance-window tests (apart)",
        "alarms": "Alarms",
        "false_alarms": "False alarms",
        "false_rate": "False alarms per 100 devices per month",
        "devices": "Devices",
        "availability": "Device availability",
        "low_battery": "Devices with low battery",
        "faults": "Faults",
        "repair_median": "Time to repair, median (s)",
        "extinguishers": "Extinguishers",
        "extinguishers_ok": "Extinguishers in service",
        "per_day": "Incidents per day",
        "day": "Day",
        "count": "Count",
        "distribution": "Time to be on scene (target {target} s)",
        "seconds": "Time to be on scene (s)",
        "target": "target",
        "false_by_building": "False alarms by building",
        "building": "Building",
        "rate": "per 100 per month",
        "availability_by_grid": "Availability by grid",
        "top_detectors": "Detectors with the most false alarms (clean or replace)",
        "device": "Device",
        "rule": "Rule",
        "by_cause": "By cause",
        "cause": "Cause",
        "incident_list": "Incidents",
        "id": "Id",
        "raised": "Raised",
        "severity": "Severity",
        "station": "Station",
        "ack_s": "Ack (s)",
        "on_scene_s": "On scene (s)",
        "resolve_s": "Resolved (s)",
        "none": "none",
    },
}

CAUSE_LABELS: Final[Mapping[str, Mapping[str, str]]] = {
    "zh": {
        "real_fire": "真实火情",
        "false_alarm": "误报",
        "test": "测试",
        "device_fault": "设备故障",
        "other": "其他",
        "unresolved": "未处置",
    },
    "en": {
        "real_fire": "real fire",
        "false_alarm": "false alarm",
        "test": "test",
        "device_fault": "device fault",
        "other": "other",
        "unresolved": "unresolved",
    },
}


@dataclass(frozen=True, slots=True, kw_only=True)
class IncidentLine:
    id: int
    raised_ms: int
    building: str
    building_name: str
    grid: str | None
    severity: str
    station: str | None
    ack_s: float | None
    on_scene_s: float | None
    resolve_s: float | None
    cause: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MonthlyReport:
    month: str
    grid: str | None
    lang: Lang
    period: f.Period
    generated_ms: int
    on_scene_target_s: float
    response: f.ResponseFigures
    response_by_station: tuple[f.Group[f.ResponseFigures], ...]
    false_alarms: f.FalseAlarmFigures
    devices: f.DeviceHealthFigures
    devices_by_grid: tuple[f.Group[f.DeviceHealthFigures], ...]
    per_day: tuple[tuple[str, int], ...]
    on_scene_histogram: tuple[tuple[int, int], ...]  # (bucket start s, incidents); the last bucket is open-ended
    incidents: tuple[IncidentLine, ...]
    building_names: Mapping[str, str]

    def label(self, key: str) -> str:
        return LABELS[self.lang][key]

    def cause(self, cause: str | None) -> str:
        return CAUSE_LABELS[self.lang].get(cause or "unresolved", cause or "")

    def building_name(self, building: str) -> str:
        return self.building_names.get(building, building)

    def local_time(self, ts_ms: int) -> str:
        return datetime.fromtimestamp(ts_ms / 1000, tz=ZoneInfo(self.period.timezone)).strftime("%Y-%m-%d %H:%M")

    def title(self) -> str:
        scope = self.grid if self.grid is not None else self.label("all_grids")
        return (
            f"{self.label('title')} {self.month}（{scope}）"
            if self.lang == "zh"
            else (f"{self.label('title')} {self.month} ({scope})")
        )

    def summary_rows(self) -> list[tuple[str, object]]:
        """The summary page's figures, in order: what the XLSX summary sheet and the CSV also carry."""
        r, fa, d = self.response, self.false_alarms, self.devices
        rows: list[tuple[str, object]] = [("incidents", r.incidents)]
        rows += [(s, r.by_severity.get(s, 0)) for s in ("fire", "supervisory", "trouble", "warning")]
        rows += [
            ("ack_median", r.acknowledge.median_s),
            ("ack_p90", r.acknowledge.p90_s),
            ("ack_within", r.acknowledged_within_timeout.ratio),
            ("dispatch_median", r.dispatch.median_s),
            ("on_scene_median", r.on_scene.median_s),
            ("on_scene_p90", r.on_scene.p90_s),
            ("on_scene_within", r.on_scene_within_target.ratio),
            ("resolve_median", r.resolve.median_s),
            ("escalations", r.escalations),
            ("drills", r.drills),
            ("tests", r.tests),
            ("alarms", fa.alarms),
            ("false_alarms", fa.false_alarms),
            ("false_rate", fa.rate_per_100_per_month),
            ("devices", d.devices),
            ("availability", d.availability),
            ("low_battery", d.low_battery_devices),
            ("faults", d.faults),
            ("repair_median", d.time_to_repair.median_s),
            ("extinguishers", d.extinguishers),
            ("extinguishers_ok", d.extinguishers_in_service_ratio),
        ]
        return rows


def _seconds(start: int, end: int | None) -> float | None:
    return None if end is None else max(0, end - start) / 1000


def histogram(seconds: Sequence[float]) -> tuple[tuple[int, int], ...]:
    counts = [0] * BUCKETS
    for s in seconds:
        counts[min(int(s // BUCKET_S), BUCKETS - 1)] += 1
    return tuple((i * BUCKET_S, n) for i, n in enumerate(counts))


def build_monthly(
    *,
    month: str,
    incidents: Sequence[f.IncidentFacts],
    alerts: Sequence[f.AlertFacts],
    devices: Sequence[f.DeviceFacts],
    targets: f.Targets,
    building_names: Mapping[str, str],
    grid: str | None = None,
    lang: Lang = "zh",
    timezone: str = f.DEFAULT_TIMEZONE,
    generated_ms: int,
) -> MonthlyReport:
    """The month's report from its facts (those of the grid only when ``grid`` is given: the caller's read)."""
    period = f.Period.month(month, timezone=timezone)
    real = sorted(
        (i for i in incidents if period.contains(i.raised_ms) and not i.drill and not i.test),
        key=lambda i: (i.raised_ms, i.id),
    )
    on_scene = [s for i in real if (s := _seconds(i.raised_ms, i.on_scene_ms)) is not None]
    return MonthlyReport(
        month=month,
        grid=grid,
        lang=lang,
        period=period,
        generated_ms=generated_ms,
        on_scene_target_s=targets.default_on_scene_target_s,
        response=f.response(incidents, period, targets),
        response_by_station=tuple(f.response_by(incidents, period, targets, "station")),
        false_alarms=f.false_alarms(alerts, devices, period),
        devices=f.device_health(alerts, devices, period),
        devices_by_grid=tuple(f.device_health_by(alerts, devices, period, "grid")),
        per_day=tuple(f.counts_by_day(incidents, period)),
        on_scene_histogram=histogram(on_scene),
        incidents=tuple(
            IncidentLine(
                id=i.id,
                raised_ms=i.raised_ms,
                building=i.building,
                building_name=building_names.get(i.building, i.building),
                grid=i.grid,
                severity=i.severity.label,
                station=i.station,
                ack_s=_seconds(i.raised_ms, i.acknowledged_ms),
                on_scene_s=_seconds(i.raised_ms, i.on_scene_ms),
                resolve_s=_seconds(i.raised_ms, i.resolved_ms),
                cause=i.cause,
            )
            for i in real
        ),
        building_names=dict(building_names),
    )
