"""``/reports``: response figures, false alarms and device health over a period (computed by :mod:`alerts.figures`
from the store's audit trail), and the audit export for inspectors.

Scope: a scoped token's figures are computed from its buildings only (the store reads nothing else), so no total
reveals a building outside it.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass

import orjson
from aiohttp import web

from alerts import figures as f
from alerts.records import iso
from alerts.reports.monthly import Lang, MonthlyReport, build_monthly
from alerts.store import AlertStore
from alerts.store.reports import PeriodFacts
from gateway.api import report_models as r
from gateway.api.framework import ApiError, Call, operation
from gateway.api.routes.listing import scope
from gateway.api.routes.state import alert_store, state_of
from gateway.config import FiregridConfig

MAX_PERIOD_DAYS = 1_100  # three years: what retention keeps, and more
MAX_DAYS_BY_DAY = 400


@dataclass(frozen=True, slots=True)
class Selection:
    """What one report request reads: its period, the buildings (None: every one) and grid in scope, the station."""

    period: f.Period
    buildings: list[str] | None
    grid: str | None
    station: str | None


def targets_of(config: FiregridConfig) -> f.Targets:
    return f.Targets(
        ack_timeout_s=config.notify.ack_timeout_s,
        on_scene_target_s={s.id: float(s.on_scene_target_s) for s in config.stations},
    )


def devices_of(config: FiregridConfig, buildings: Sequence[str] | None, grid: str | None) -> list[f.DeviceFacts]:
    grids = {b.id: b.grid for b in config.buildings}
    wanted = None if buildings is None else set(buildings)
    return [
        f.DeviceFacts(id=d.id, building=d.building, grid=grids.get(d.building), kind=str(d.kind))
        for d in config.devices
        if (wanted is None or d.building in wanted) and (grid is None or grids.get(d.building) == grid)
    ]


def _station_buildings(config: FiregridConfig, station: str) -> set[str]:
    grids = {b.id: b.grid for b in config.buildings}
    for s in config.stations:
        if s.id == station:
            return set(s.buildings) | {b for b, g in grids.items() if g in set(s.grids)}
    return set()


def selected_devices(config: FiregridConfig, sel: Selection) -> list[f.DeviceFacts]:
    """The devices a selection covers: its buildings and grid, narrowed to the station's area when it names one."""
    buildings = sel.buildings
    if sel.station is not None:
        covered = _station_buildings(config, sel.station)
        buildings = sorted(covered if buildings is None else covered & set(buildings))
    return devices_of(config, buildings, sel.grid)


def select(call: Call, q: r.ReportQuery) -> Selection:
    state = state_of(call)
    zone = state.config.notify.timezone
    now = state.clock_ms()
    start = q.from_ if q.from_ is not None else f.bucket_start(now, "month", zone)
    end = q.to if q.to is not None else max(now, start + 1)
    if end <= start:
        raise ApiError(400, "`to` must be after `from`", type="urn:firegrid:problem:invalid-query")
    # Bounds on the work one request may ask for: a figure is computed per group, and a day is a group.
    days = (end - start) / 86_400_000
    if days > MAX_PERIOD_DAYS or (q.by == "day" and days > MAX_DAYS_BY_DAY):
        raise ApiError(
            400,
            f"a report covers at most {MAX_PERIOD_DAYS} days, and at most {MAX_DAYS_BY_DAY} when grouped by day",
            type="urn:firegrid:problem:invalid-query",
        )
    where = scope(call, building=q.building, grid=q.grid)
    building = where.building
    buildings = None if building is None else [building] if isinstance(building, str) else list(building)
    return Selection(f.Period(start_ms=start, end_ms=end, timezone=zone), buildings, where.grid, q.station)


async def facts(call: Call, sel: Selection) -> PeriodFacts:
    store = alert_store(call)
    read = await asyncio.to_thread(
        store.period_facts,
        start_ms=sel.period.start_ms,
        end_ms=sel.period.end_ms,
        buildings=sel.buildings,
        grid=sel.grid,
    )
    if sel.station is None:
        return read
    covered = _station_buildings(state_of(call).config, sel.station)
    return PeriodFacts(
        tuple(i for i in read.incidents if i.station == sel.station),
        tuple(a for a in read.alerts if a.building in covered),
    )


# --- conversions -------------------------------------------------------------------------------------------------


def period_out(period: f.Period) -> r.PeriodOut:
    return r.PeriodOut(from_ms=period.start_ms, to_ms=period.end_ms, timezone=period.timezone)


def durations_out(d: f.Durations) -> r.DurationsOut:
    return r.DurationsOut(count=d.count, median_s=d.median_s, p90_s=d.p90_s, max_s=d.max_s)


def share_out(s: f.Share) -> r.ShareOut:
    return r.ShareOut(count=s.count, of=s.of, ratio=s.ratio)


def response_out(x: f.ResponseFigures) -> r.ResponseFiguresOut:
    return r.ResponseFiguresOut(
        incidents=x.incidents,
        by_severity=dict(x.by_severity),
        acknowledge=durations_out(x.acknowledge),
        dispatch=durations_out(x.dispatch),
        on_scene=durations_out(x.on_scene),
        resolve=durations_out(x.resolve),
        acknowledged_within_timeout=share_out(x.acknowledged_within_timeout),
        on_scene_within_target=share_out(x.on_scene_within_target),
        escalations=x.escalations,
        escalated_incidents=x.escalated_incidents,
        drills=x.drills,
        tests=x.tests,
    )


def count_rate_out(c: f.CountRate, names: dict[str, str]) -> r.CountRateOut:
    return r.CountRateOut(
        key=c.key,
        count=c.count,
        devices=c.devices,
        rate_per_100_per_month=c.rate_per_100_per_month,
        building=c.building,
        building_name=None if c.building is None else names.get(c.building, c.building),
        grid=c.grid,
        rule=c.rule,
    )


def devices_out(x: f.DeviceHealthFigures) -> r.DeviceFiguresOut:
    return r.DeviceFiguresOut(
        devices=x.devices,
        availability=x.availability,
        offline_events=x.offline_events,
        low_battery_devices=x.low_battery_devices,
        faults=x.faults,
        time_to_repair=durations_out(x.time_to_repair),
        extinguishers=x.extinguishers,
        extinguishers_in_service=x.extinguishers_in_service,
        extinguishers_in_service_ratio=x.extinguishers_in_service_ratio,
        tests=x.tests,
    )


# --- operations --------------------------------------------------------------------------------------------------


@operation(
    "GET",
    "/reports/response",
    summary="Response figures: time to acknowledge, dispatch, be on scene and resolve",
    tag="reports",
    query=r.ReportQuery,
    response=r.ResponseReport,
    errors=(403,),
)
async def response_report(call: Call) -> r.ResponseReport:
    """Over the incidents raised in `[from, to)` (default: this month so far); drills and maintenance-window
    (test) incidents are counted apart. Durations are seconds from the incident being raised; p90 is nearest-rank."""
    q: r.ReportQuery = call.query
    sel = select(call, q)
    read = await facts(call, sel)
    targets = targets_of(state_of(call).config)
    groups = []
    if q.by is not None:
        groups = [
            r.ResponseGroup(key=g.key, figures=response_out(g.figures))
            for g in f.response_by(read.incidents, sel.period, targets, q.by)
        ]
    return r.ResponseReport(
        period=period_out(sel.period),
        ack_timeout_s=targets.ack_timeout_s,
        on_scene_target_s={"*": targets.default_on_scene_target_s, **targets.on_scene_target_s},
        figures=response_out(f.response(read.incidents, sel.period, targets)),
        groups=groups,
    )


@operation(
    "GET",
    "/reports/false-alarms",
    summary="False alarms by cause, building and device, per 100 devices per month",
    tag="reports",
    query=r.ReportQuery,
    response=r.FalseAlarmReport,
    errors=(403,),
)
async def false_alarm_report(call: Call) -> r.FalseAlarmReport:
    """Alarms are the fire and supervisory alerts raised in the period; `top_detectors` are the devices with the
    most false alarms (candidates for cleaning or replacement). `by` (`day`, `week`, `month`, `grid`, `building`)
    adds the groups, each rate over its own days and devices."""
    q: r.ReportQuery = call.query
    sel = select(call, q)
    read = await facts(call, sel)
    config = state_of(call).config
    devices = selected_devices(config, sel)
    x = f.false_alarms(read.alerts, devices, sel.period)
    names = {b.id: b.name for b in config.buildings}
    groups = []
    if q.by is not None:
        groups = [
            r.FalseAlarmGroup(
                key=g.key,
                false_alarms=g.figures.false_alarms,
                alarms=g.figures.alarms,
                devices=g.figures.devices,
                rate_per_100_per_month=g.figures.rate_per_100_per_month,
                by_cause=dict(g.figures.by_cause),
            )
            for g in f.false_alarms_by(read.alerts, devices, sel.period, q.by)
        ]
    return r.FalseAlarmReport(
        period=period_out(sel.period),
        alarms=x.alarms,
        false_alarms=x.false_alarms,
        devices=x.devices,
        months=x.months,
        rate_per_100_per_month=x.rate_per_100_per_month,
        by_cause=dict(x.by_cause),
        by_building=[count_rate_out(c, names) for c in x.by_building],
        by_device=[count_rate_out(c, names) for c in x.by_device],
        top_detectors=[count_rate_out(c, names) for c in x.top_detectors],
        drills=x.drills,
        tests=x.tests,
        groups=groups,
    )


@operation(
    "GET",
    "/reports/devices",
    summary="Device health: availability, low battery, faults and time to repair, extinguishers in service",
    tag="reports",
    query=r.ReportQuery,
    response=r.DeviceReport,
    errors=(403,),
)
async def device_report(call: Call) -> r.DeviceReport:
    """Availability is the share of the period devices were not under an absence alert; `by` may be `day`, `week`,
    `month`, `grid` or `building`."""
    q: r.ReportQuery = call.query
    sel = select(call, q)
    read = await facts(call, sel)
    config = state_of(call).config
    devices = selected_devices(config, sel)
    groups = []
    if q.by is not None:
        groups = [
            r.DeviceGroup(key=g.key, figures=devices_out(g.figures))
            for g in f.device_health_over(read.alerts, devices, sel.period, q.by)
        ]
    return r.DeviceReport(
        period=period_out(sel.period),
        figures=devices_out(f.device_health(read.alerts, devices, sel.period)),
        groups=groups,
    )


def _strip(read: PeriodFacts, period: f.Period, targets: f.Targets, devices: list[f.DeviceFacts]) -> r.StripFigures:
    response = f.response(read.incidents, period, targets)
    false = f.false_alarms(read.alerts, devices, period)
    health = f.device_health(read.alerts, devices, period)
    return r.StripFigures(
        from_ms=period.start_ms,
        to_ms=period.end_ms,
        incidents=response.incidents,
        ack_median_s=response.acknowledge.median_s,
        on_scene_within_target=response.on_scene_within_target.ratio,
        on_scene_counted=response.on_scene_within_target.of,
        false_alarm_rate=false.rate_per_100_per_month,
        false_alarms=false.false_alarms,
        availability=health.availability,
        extinguishers_in_service=health.extinguishers_in_service_ratio,
    )


@operation(
    "GET",
    "/reports/strip",
    summary="The dashboard's figures strip: today and this month so far, and devices online now",
    tag="reports",
    response=r.FiguresStrip,
)
async def figures_strip(call: Call) -> r.FiguresStrip:
    """Today and this month are cut in `notify.timezone`, each up to now; one read of the month serves both."""
    state = state_of(call)
    config = state.config
    now = state.clock_ms()
    zone = config.notify.timezone
    month = f.Period(start_ms=f.bucket_start(now, "month", zone), end_ms=now + 1, timezone=zone)
    today = f.Period(start_ms=f.bucket_start(now, "day", zone), end_ms=now + 1, timezone=zone)
    sel = select(call, r.ReportQuery.model_validate({"from": month.start_ms, "to": month.end_ms}))
    read = await facts(call, sel)
    devices = devices_of(config, sel.buildings, sel.grid)
    targets = targets_of(config)
    who = call.who
    index = state.device_index()
    presence = state.runtime.presence
    online = 0
    total = 0
    if presence is not None:
        index.refresh()
        known = presence.devices
        for building in index.buildings():
            if not who.sees_building(building):
                continue
            for device_id in index.ids(building):
                total += 1
                record = known.get(device_id)
                online += bool(record is not None and record.state(now) == "online")
    else:
        total = len(devices)
    return r.FiguresStrip(
        today=_strip(read, today, targets, devices),
        month=_strip(read, month, targets, devices),
        devices_online=online,
        devices_total=total,
    )


AUDIT_COLUMNS = ("time", "ts_ms", "kind", "id", "incident_id", "building", "grid", "action", "by", "detail")


@operation(
    "GET",
    "/reports/audit",
    summary="The audit trail of alerts and incidents over a period (CSV for inspectors, or JSON lines)",
    tag="reports",
    query=r.AuditQuery,
    errors=(403,),
    files=("text/csv", "application/x-ndjson"),
)
async def audit_export(call: Call) -> web.StreamResponse:
    """Every step (raised, acknowledged, dispatched, on scene, resolved, escalated ...) with who took it, oldest
    first; times are RFC 3339 in UTC. Streamed: a year's trail is never held in memory."""
    q: r.AuditQuery = call.query
    if q.to <= q.from_:
        raise ApiError(400, "`to` must be after `from`", type="urn:firegrid:problem:invalid-query")
    sel = select(
        call, r.ReportQuery.model_validate({"from": q.from_, "to": q.to, "grid": q.grid, "building": q.building})
    )
    store = alert_store(call)
    rows = store.audit_rows(start_ms=q.from_, end_ms=q.to, buildings=sel.buildings, grid=sel.grid)
    csv_out = q.format == "csv"
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/csv; charset=utf-8" if csv_out else "application/x-ndjson",
            "Content-Disposition": f'attachment; filename="firegrid-audit.{"csv" if csv_out else "jsonl"}"',
        }
    )
    await response.prepare(call.request)
    who = call.who
    sentinel = object()
    if csv_out:
        await response.write("\ufeff".encode())  # so that a spreadsheet opens the Chinese text as UTF-8
        await response.write(_csv_line(AUDIT_COLUMNS))
    while True:
        chunk = await asyncio.to_thread(lambda: [x for _, x in zip(range(2000), rows, strict=False)] or sentinel)
        if chunk is sentinel:
            break
        assert isinstance(chunk, list)
        out = io.BytesIO()
        for row in chunk:
            if not who.sees_building(row.building):
                continue
            fields = (iso(row.ts_ms), row.ts_ms, row.kind, row.subject_id, row.incident_id, row.building, row.grid)
            if csv_out:
                out.write(_csv_line((*fields, row.action, row.by or "", row.detail or "")))
            else:
                out.write(
                    orjson.dumps(dict(zip(AUDIT_COLUMNS, (*fields, row.action, row.by, row.detail), strict=True)))
                )
                out.write(b"\n")
        await response.write(out.getvalue())
    await response.write_eof()
    return response


def _csv_line(values: Sequence[object]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(["" if v is None else v for v in values])
    return buffer.getvalue().encode()


def monthly_report(
    config: FiregridConfig,
    store: AlertStore,
    *,
    month: str,
    grid: str | None,
    buildings: Sequence[str] | None,
    lang: Lang,
    now_ms: int,
) -> MonthlyReport:
    """The month's report from the store (blocking: run it off the event loop).  ``buildings``: the scope's
    buildings (None: every one)."""
    zone = config.notify.timezone
    period = f.Period.month(month, timezone=zone)
    read = store.period_facts(start_ms=period.start_ms, end_ms=period.end_ms, buildings=buildings, grid=grid)
    return build_monthly(
        month=month,
        incidents=read.incidents,
        alerts=read.alerts,
        devices=devices_of(config, buildings, grid),
        targets=targets_of(config),
        building_names={b.id: b.name for b in config.buildings},
        grid=grid,
        lang=lang,
        timezone=zone,
        generated_ms=now_ms,
    )


@operation(
    "GET",
    "/reports/monthly",
    summary="The monthly report: JSON figures, or a document to file (HTML, PDF, XLSX, CSV)",
    tag="reports",
    query=r.MonthlyQuery,
    response=r.MonthlySummary,
    errors=(403,),
    files=(
        "text/html",
        "application/pdf",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "text/csv",
    ),
)
async def monthly(call: Call) -> r.MonthlySummary | web.StreamResponse:
    """Chinese by default (`lang=en` for English). `format=json` gives the summary figures (the same as the
    summary page, the XLSX summary sheet and the CSV); the documents carry the charts (incidents per day,
    time to be on scene against the target, false alarms by building, availability by grid) and their tables."""
    q: r.MonthlyQuery = call.query
    state = state_of(call)
    where = scope(call, building=None, grid=q.grid)
    buildings = (
        None
        if where.building is None
        else [where.building]
        if isinstance(where.building, str)
        else list(where.building)
    )
    store = alert_store(call)
    report = await asyncio.to_thread(
        monthly_report,
        state.config,
        store,
        month=q.month,
        grid=q.grid,  # the scoped list already keeps to it; the title names it
        buildings=buildings,
        lang=q.lang,
        now_ms=state.clock_ms(),
    )
    if q.format == "json":
        return r.MonthlySummary(
            month=report.month,
            grid=q.grid,
            lang=q.lang,
            period=period_out(report.period),
            figures={key: value for key, value in report.summary_rows()},  # type: ignore[misc]
            response=response_out(report.response),
            per_day=[r.DayCount(day=d, incidents=n) for d, n in report.per_day],
        )
    from alerts.reports.render import CONTENT_TYPES, ReportError, render

    try:
        body = await asyncio.to_thread(render, report, q.format)
    except ReportError as exc:
        raise ApiError(503, str(exc), type="urn:firegrid:problem:unavailable") from None
    name = f"firegrid-{q.month}{'-' + q.grid if q.grid else ''}.{q.format}"
    return web.Response(
        body=body,
        headers={"Content-Type": CONTENT_TYPES[q.format], "Content-Disposition": f'attachment; filename="{name}"'},
    )
