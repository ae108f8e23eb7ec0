"""Response figures, false alarms and device health: a month of incidents with known timings goes through the real
alert store (the clock injected as each step's ``now_ms``), and every figure the API serves is checked against the
same figure computed here, independently, from the plan that produced them.  Drills and maintenance-window (test)
alerts are in the month too, and must stay out of the real figures.
"""

from __future__ import annotations

import csv
import io
import math
import random
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from alerts import figures as f
from alerts.store import AlertStore
from gateway.api import create_api_app
from rules.types import AlertTransition, Severity
from testkit.api import build_runtime, config_for_tests

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
VIEWER = {"Authorization": "Bearer demo-viewer-token"}
G01 = {"Authorization": "Bearer demo-g01-token"}
ZONE = ZoneInfo("Asia/Shanghai")
MONTH_START = int(datetime(2026, 11, 1, tzinfo=ZONE).timestamp() * 1000)
MONTH_END = int(datetime(2026, 12, 1, tzinfo=ZONE).timestamp() * 1000)
HOUR = 3_600_000
DAY = 24 * HOUR


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime, clock_ms=lambda: MONTH_END + DAY))) as c:
        yield c


async def get(client: TestClient, path: str, headers: dict[str, str] = VIEWER) -> Any:
    response = await client.get(path, headers=headers)
    assert response.status == 200, await response.text()
    return await response.json()


# --- the independent arithmetic ----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def p90(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    rank = math.ceil(len(s) * 9 / 10)  # nearest rank
    return s[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "median_s": median(values),
        "p90_s": p90(values),
        "max_s": max(values) if values else None,
    }


# --- the month ---------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    raised: int
    building: str
    grid: str
    device: str
    kind: str  # real | drill | test
    ack_s: int | None
    dispatch_s: int | None
    station: str | None
    on_scene_s: int | None
    resolve_s: int | None
    cause: str | None
    escalations: int
    alert_id: int = 0
    incident_id: int = 0


def month_plan(runtime: Any, *, seed: int = 16) -> list[Plan]:
    rng = random.Random(seed)
    config = runtime.config
    grids = {b.id: b.grid for b in config.buildings}
    smoke = {}
    for d in config.devices:
        if d.kind == "smoke":
            smoke.setdefault(d.building, []).append(d.id)
    buildings = sorted(smoke)
    plans = []
    # Two outside the month (the evening before it, local time, and the first minutes after it) and 84 inside.
    times = [MONTH_START - HOUR, MONTH_END + 30 * 60_000] + [
        MONTH_START + k * 8 * HOUR + 1234 + rng.randint(0, 6 * HOUR) for k in range(84)
    ]
    for k, raised in enumerate(times):
        building = buildings[k % len(buildings)]
        kind = "drill" if k % 10 == 7 else "test" if k % 10 == 8 else "real"
        acked = k % 9 != 0
        ack_s = rng.randint(5, 200) if acked else None
        dispatch_s = ack_s + rng.randint(5, 60) if ack_s is not None and k % 4 != 3 else None
        station = None if dispatch_s is None or k % 6 == 1 else ("ms-east" if k % 2 else "ms-west")
        on_scene_s = dispatch_s + rng.randint(20, 250) if station is not None and dispatch_s is not None else None
        after = on_scene_s or dispatch_s or ack_s or 0
        resolve_s = None if k % 13 == 5 else after + rng.randint(60, 3600)
        cause = None if resolve_s is None else ("false_alarm", "real_fire", "other", "false_alarm", "test")[k % 5]
        plans.append(
            Plan(
                raised=raised,
                building=building,
                grid=grids[building],
                device=smoke[building][k % len(smoke[building])] if k % 3 else smoke[building][0],
                kind=kind,
                ack_s=ack_s,
                dispatch_s=dispatch_s,
                station=station,
                on_scene_s=on_scene_s,
                resolve_s=resolve_s,
                cause=cause,
                escalations=2 if not acked else 0,
            )
        )
    return plans


def event(store: AlertStore, incident_id: int, ts_ms: int, action: str, detail: dict[str, Any] | None) -> None:
    """An incident event as the incident workflow writes it (``incident_events``, the agreed contract)."""
    with store._core.tx() as cur:
        cur.execute(
            "INSERT INTO incident_events (incident_id, ts_ms, action, actor, by_name, detail) VALUES (?,?,?,?,?,?)",
            (
                incident_id,
                ts_ms,
                action,
                "micro-station",
                "王五",
                None if detail is None else orjson.dumps(detail).decode(),
            ),
        )
        if action == "dispatched":
            cur.execute(
                "UPDATE incidents SET station = ?, state = 'dispatched' WHERE id = ?", (detail["station"], incident_id)
            )  # type: ignore[index]


def run_month(store: AlertStore, plans: list[Plan]) -> None:
    """Each step at its own time, in time order across incidents (as a running gateway would see them)."""
    steps: list[tuple[int, int, str, Plan]] = []
    for n, p in enumerate(plans):
        steps.append((p.raised, n, "raise", p))
        for offset, name in (
            (p.ack_s, "ack"),
            (p.dispatch_s, "dispatch"),
            (p.on_scene_s, "on_scene"),
            (p.resolve_s, "resolve"),
        ):
            if offset is not None:
                steps.append((p.raised + offset * 1000, n, name, p))
        for e in range(p.escalations):
            steps.append((p.raised + (e + 1) * 60_000, n, "escalate", p))
    for ts, n, name, p in sorted(steps, key=lambda s: (s[0], s[1])):
        if name == "raise":
            prefix = "drill:" if p.kind == "drill" else ""
            changes = store.apply(
                [
                    AlertTransition(
                        transition="raised",
                        key=f"{prefix}smoke-detector-alarm:{p.building}:{p.device}:{n}",
                        rule="smoke-detector-alarm",
                        severity=Severity.FIRE,
                        building=p.building,
                        floor=1,
                        device=p.device,
                        ts_ms=ts,
                        reason="smoke detector in alarm",
                        test=p.kind == "test",
                        grid=p.grid,
                        drill=p.kind == "drill",
                    )
                ],
                now_ms=ts,
            )
            raised = next(c for c in changes if c.type == "alert.raised")
            p.alert_id, p.incident_id = int(raised.alert_id or 0), int(raised.incident_id or 0)
        elif name == "ack":
            store.acknowledge(p.alert_id, by="micro-station", now_ms=ts)
        elif name == "dispatch":
            store.dispatch(p.alert_id, by="micro-station", to=p.station or "第一小队", now_ms=ts)
            if p.station is not None:
                event(store, p.incident_id, ts, "dispatched", {"station": p.station, "members": ["王五"]})
        elif name == "on_scene":
            event(store, p.incident_id, ts, "on_scene", {"via": "api"})
        elif name == "escalate":
            event(store, p.incident_id, ts, "escalated", {"tier": 1, "reason": "not acknowledged"})
        else:
            assert p.cause is not None
            store.resolve(p.alert_id, by="micro-station", cause=p.cause, now_ms=ts)


def expected_response(plans: list[Plan], *, grid: str | None = None) -> dict[str, Any]:
    inside = [p for p in plans if MONTH_START <= p.raised < MONTH_END and (grid is None or p.grid == grid)]
    real = [p for p in inside if p.kind == "real"]
    sent = [p for p in real if p.station is not None]
    return {
        "incidents": len(real),
        "by_severity": {"fire": len(real), "supervisory": 0, "trouble": 0, "warning": 0},
        "acknowledge": summary([float(p.ack_s) for p in real if p.ack_s is not None]),
        "dispatch": summary([float(p.dispatch_s) for p in real if p.dispatch_s is not None]),
        "on_scene": summary([float(p.on_scene_s) for p in real if p.on_scene_s is not None]),
        "resolve": summary([float(p.resolve_s) for p in real if p.resolve_s is not None]),
        "acknowledged_within_timeout": share(sum(1 for p in real if p.ack_s is not None and p.ack_s <= 60), len(real)),
        "on_scene_within_target": share(
            sum(1 for p in sent if p.on_scene_s is not None and p.on_scene_s <= 180), len(sent)
        ),
        "escalations": sum(p.escalations for p in real),
        "escalated_incidents": sum(1 for p in real if p.escalations),
        "drills": sum(1 for p in inside if p.kind == "drill"),
        "tests": sum(1 for p in inside if p.kind == "test"),
    }


def share(count: int, of: int) -> dict[str, Any]:
    return {"count": count, "of": of, "ratio": None if of == 0 else count / of}


def q(**params: Any) -> str:
    return "&".join(f"{k}={v}" for k, v in {"from": MONTH_START, "to": MONTH_END, **params}.items())


async def test_a_month_of_incidents_gives_the_figures_computed_from_its_timings(
    client: TestClient, runtime: Any
) -> None:
    plans = month_plan(runtime)
    run_month(runtime.store, plans)
    assert sum(p.kind == "drill" for p in plans) and sum(p.kind == "test" for p in plans)

    report = await get(client, f"/api/v1/reports/response?{q()}")
    assert report["period"] == {"from_ms": MONTH_START, "to_ms": MONTH_END, "timezone": "Asia/Shanghai"}
    assert report["figures"] == expected_response(plans)
    assert report["figures"]["incidents"] > 50 and report["figures"]["on_scene"]["count"] > 10

    # The same month, asked as a calendar month by default ("this month" of a clock inside it).
    async with TestClient(TestServer(create_api_app(runtime, clock_ms=lambda: MONTH_START + 40 * DAY // 2))) as c2:
        mid = await get(c2, "/api/v1/reports/response")
    assert mid["period"]["from_ms"] == MONTH_START

    # By grid: each grid's figures are the month's figures of its incidents; a grid-scoped token sees only its own.
    by_grid = await get(client, f"/api/v1/reports/response?{q(by='grid')}")
    for group in by_grid["groups"]:
        assert group["figures"] == expected_response(plans, grid=group["key"]), group["key"]
    assert {g["key"] for g in by_grid["groups"]} == {p.grid for p in plans}
    scoped = await get(client, f"/api/v1/reports/response?{q()}", headers=G01)
    assert scoped["figures"] == expected_response(plans, grid="g01")
    assert (await client.get(f"/api/v1/reports/response?{q(grid='g02')}", headers=G01)).status == 403
    # Bad periods are refused with a reason: backwards, or more work than a report may ask for.
    for bad in (
        f"from={MONTH_END}&to={MONTH_START}",
        f"from=0&to={MONTH_END}",
        f"from={MONTH_START - 500 * DAY}&by=day",
    ):
        refused = await client.get(f"/api/v1/reports/response?{bad}", headers=VIEWER)
        assert refused.status == 400 and (await refused.json())["detail"], bad

    # By station and by day: the groups partition the real incidents.
    by_station = await get(client, f"/api/v1/reports/response?{q(by='station')}")
    real = [p for p in plans if MONTH_START <= p.raised < MONTH_END and p.kind == "real"]
    assert {g["key"]: g["figures"]["incidents"] for g in by_station["groups"]} == dict(
        Counter(p.station or "-" for p in real)
    )
    east = await get(client, f"/api/v1/reports/response?{q(station='ms-east')}")
    assert east["figures"]["incidents"] == sum(1 for p in real if p.station == "ms-east")
    assert east["figures"]["on_scene"] == summary([float(p.on_scene_s or 0) for p in real if p.station == "ms-east"])
    by_day = await get(client, f"/api/v1/reports/response?{q(by='day')}")
    days = Counter(datetime.fromtimestamp(p.raised / 1000, tz=ZONE).strftime("%Y-%m-%d") for p in real)
    assert {g["key"]: g["figures"]["incidents"] for g in by_day["groups"] if g["figures"]["incidents"]} == dict(days)

    # False alarms: every fire alarm of the month with its cause; the rate per 100 devices of one whole month.
    fa = await get(client, f"/api/v1/reports/false-alarms?{q()}")
    false = [p for p in real if p.cause == "false_alarm"]
    devices = len(runtime.config.devices)
    assert fa["alarms"] == len(real) and fa["false_alarms"] == len(false) and fa["devices"] == devices
    assert fa["months"] == pytest.approx(1.0)
    assert fa["rate_per_100_per_month"] == pytest.approx(len(false) * 100 / devices)
    assert fa["by_cause"] == dict(sorted(Counter(p.cause or "unresolved" for p in real).items()))
    assert {b["key"]: b["count"] for b in fa["by_building"]} == dict(Counter(p.building for p in false))
    per_device = Counter(p.device for p in false)
    assert {d["key"]: d["count"] for d in fa["by_device"]} == dict(per_device)
    most = max(per_device.values())
    assert fa["top_detectors"][0]["count"] == most and fa["top_detectors"][0]["key"] in {
        d for d, n in per_device.items() if n == most
    }
    names = {b.id: b.name for b in runtime.config.buildings}
    assert all(b["building_name"] == names[b["key"]] for b in fa["by_building"])
    assert fa["drills"] == sum(1 for p in plans if MONTH_START <= p.raised < MONTH_END and p.kind == "drill")
    # ... by day (each day's rate over that day) and by grid (each grid's own devices).
    fa_days = await get(client, f"/api/v1/reports/false-alarms?{q(by='day')}")
    assert len(fa_days["groups"]) == 30
    false_days = Counter(datetime.fromtimestamp(p.raised / 1000, tz=ZONE).strftime("%Y-%m-%d") for p in false)
    assert {g["key"]: g["false_alarms"] for g in fa_days["groups"] if g["false_alarms"]} == dict(false_days)
    first = fa_days["groups"][0]
    assert first["rate_per_100_per_month"] == pytest.approx(first["false_alarms"] * 100 / devices * 30)
    fa_grids = await get(client, f"/api/v1/reports/false-alarms?{q(by='grid')}")
    grid_of = {b.id: b.grid for b in runtime.config.buildings}
    grid_devices = Counter(grid_of[d.building] for d in runtime.config.devices)
    for g in fa_grids["groups"]:
        assert g["false_alarms"] == sum(1 for p in false if p.grid == g["key"]), g["key"]
        assert g["devices"] == grid_devices[g["key"]]
        assert g["rate_per_100_per_month"] == pytest.approx(g["false_alarms"] * 100 / grid_devices[g["key"]])

    # The audit export: every step of the month, as CSV an inspector's spreadsheet opens.
    response = await client.get(f"/api/v1/reports/audit?{q(format='csv')}", headers=VIEWER)
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/csv")
    text = (await response.read()).decode("utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert all(MONTH_START <= int(r["ts_ms"]) < MONTH_END for r in rows)
    raised_rows = [r for r in rows if r["kind"] == "alert" and r["action"] == "raised"]
    inside = [p for p in plans if MONTH_START <= p.raised < MONTH_END]
    assert sorted(int(r["id"]) for r in raised_rows) == sorted(p.alert_id for p in inside)
    on_scene = [r for r in rows if r["kind"] == "incident" and r["action"] == "on_scene"]
    assert len(on_scene) == sum(
        1 for p in plans if p.on_scene_s is not None and MONTH_START <= p.raised + p.on_scene_s * 1000 < MONTH_END
    )
    assert all(r["by"] == "王五" for r in on_scene)
    scoped_csv = (await (await client.get(f"/api/v1/reports/audit?{q()}", headers=G01)).read()).decode("utf-8-sig")
    assert {r["grid"] for r in csv.DictReader(io.StringIO(scoped_csv))} == {"g01"}


async def test_device_health_from_absence_fault_battery_and_extinguisher_alerts(
    client: TestClient, runtime: Any
) -> None:
    store: AlertStore = runtime.store
    config = runtime.config
    by_kind: dict[str, list[str]] = {}
    building_of = {d.id: d.building for d in config.devices}
    for d in config.devices:
        by_kind.setdefault(str(d.kind), []).append(d.id)
    smoke, ext = by_kind["smoke"], by_kind["extinguisher"]
    grids = {b.id: b.grid for b in config.buildings}

    def alert(
        device: str,
        rule: str,
        severity: Severity,
        raised: int,
        cleared: int | None,
        *,
        test: bool = False,
        resolve: int | None = None,
    ) -> None:
        key = f"{rule}:{device}:{raised}"
        common = dict(
            key=key,
            rule=rule,
            severity=severity,
            building=building_of[device],
            floor=1,
            device=device,
            reason=rule,
            grid=grids[building_of[device]],
            test=test,
        )
        changes = store.apply([AlertTransition(transition="raised", ts_ms=raised, **common)], now_ms=raised)  # type: ignore[arg-type]
        alert_id = int(next(c for c in changes if c.type == "alert.raised").alert_id or 0)
        if cleared is not None:
            store.apply([AlertTransition(transition="cleared", ts_ms=cleared, **common)], now_ms=cleared)  # type: ignore[arg-type]
        if resolve is not None:
            store.resolve(alert_id, by="维保", cause="device_fault", now_ms=resolve)

    alert(smoke[0], "device-absent", Severity.TROUBLE, MONTH_START + 9 * DAY, MONTH_START + 11 * DAY)  # 2 days
    alert(smoke[1], "device-absent", Severity.TROUBLE, MONTH_START - 2 * DAY, MONTH_START + DAY)  # 1 day of November
    alert(smoke[2], "device-absent", Severity.TROUBLE, MONTH_START - 9 * DAY, MONTH_START - 8 * DAY)  # October only
    alert(smoke[3], "device-absent", Severity.TROUBLE, MONTH_START + 3 * DAY, MONTH_START + 6 * DAY, test=True)
    alert(
        smoke[4], "device-fault", Severity.TROUBLE, MONTH_START + 4 * DAY + 10 * HOUR, MONTH_START + 4 * DAY + 14 * HOUR
    )
    alert(smoke[5], "device-fault", Severity.TROUBLE, MONTH_START + 19 * DAY, None, resolve=MONTH_START + 20 * DAY)
    alert(smoke[6], "battery-low", Severity.TROUBLE, MONTH_START + 14 * DAY, None)
    alert(smoke[7], "battery-low", Severity.TROUBLE, MONTH_START - 30 * DAY, MONTH_START - 20 * DAY)  # long gone
    alert(ext[0], "extinguisher-missing", Severity.SUPERVISORY, MONTH_START + 24 * DAY, None)  # still missing
    alert(ext[1], "extinguisher-pressure", Severity.SUPERVISORY, MONTH_START + 2 * DAY, MONTH_START + 3 * DAY)

    report = await get(client, f"/api/v1/reports/devices?{q(by='grid')}")
    n = len(config.devices)
    month_ms = MONTH_END - MONTH_START
    figures = report["figures"]
    assert figures["devices"] == n
    assert figures["availability"] == pytest.approx(1 - (3 * DAY / month_ms) / n)
    assert figures["offline_events"] == 1  # the one raised in November (the test one is apart)
    assert figures["low_battery_devices"] == 1
    assert figures["faults"] == 2
    assert figures["time_to_repair"] == summary([4 * 3600.0, 24 * 3600.0])
    assert figures["extinguishers"] == len(ext) and figures["extinguishers_in_service"] == len(ext) - 1
    assert figures["extinguishers_in_service_ratio"] == pytest.approx((len(ext) - 1) / len(ext))
    assert figures["tests"] == 1
    # By grid: the devices of each grid, and the offline time where it happened.
    groups = {g["key"]: g["figures"] for g in report["groups"]}
    per_grid = Counter(grids[building_of[d.id]] for d in config.devices)
    assert {k: v["devices"] for k, v in groups.items()} == dict(per_grid)
    offline_grid = grids[building_of[smoke[0]]]
    down = (2 * DAY if grids[building_of[smoke[1]]] != offline_grid else 3 * DAY) / month_ms
    assert groups[offline_grid]["availability"] == pytest.approx(1 - down / per_grid[offline_grid])
    # By week (Monday first): each week's availability over its own days; November 2026 has six weeks in part.
    weeks = {g["key"]: g["figures"] for g in (await get(client, f"/api/v1/reports/devices?{q(by='week')}"))["groups"]}
    assert list(weeks) == ["2026-W44", "2026-W45", "2026-W46", "2026-W47", "2026-W48", "2026-W49"]
    assert weeks["2026-W44"]["availability"] == pytest.approx(1 - 1 / n)  # Sunday 1 November, smoke[1] all day
    assert weeks["2026-W46"]["availability"] == pytest.approx(1 - (2 / 7) / n)  # 9-15 November, smoke[0] two days
    assert weeks["2026-W45"]["availability"] == 1.0 and weeks["2026-W46"]["offline_events"] == 1
    assert weeks["2026-W49"]["extinguishers_in_service"] == len(ext) - 1


def test_pure_figures_edges() -> None:
    period = f.Period.month("2026-11")
    assert (period.start_ms, period.end_ms) == (MONTH_START, MONTH_END)
    assert f.months_in(f.Period(start_ms=MONTH_START, end_ms=MONTH_START + 3 * DAY)) == pytest.approx(3 / 30)
    two = f.Period(start_ms=MONTH_START + 15 * DAY, end_ms=MONTH_END + 31 * DAY)  # half of November, all December
    assert f.months_in(two) == pytest.approx(0.5 + 1.0)
    assert f.Durations.of([]) == f.Durations(count=0, median_s=None, p90_s=None, max_s=None)
    assert f.Durations.of([4.0, 1.0, 3.0, 2.0]) == f.Durations(count=4, median_s=2.5, p90_s=4.0, max_s=4.0)
    assert f.Durations.of(float(x) for x in range(1, 21)).p90_s == 18.0
    assert f.bucket_label(MONTH_START, "week") == "2026-W44" and f.bucket_label(MONTH_START + DAY, "week") == "2026-W45"

    def incident(i: int, station: str, on_scene_s: int) -> f.IncidentFacts:
        raised = MONTH_START + i * HOUR
        return f.IncidentFacts(
            id=i,
            building="b",
            grid="g",
            station=station,
            drill=False,
            test=False,
            severity=Severity.FIRE,
            raised_ms=raised,
            acknowledged_ms=raised + 30_000,
            dispatched_ms=raised + 40_000,
            on_scene_ms=raised + on_scene_s * 1000,
        )

    # Each station is judged against its own target.
    incidents = [incident(1, "near", 150), incident(2, "near", 200), incident(3, "far", 280), incident(4, "far", 320)]
    targets = f.Targets(ack_timeout_s=60, on_scene_target_s={"near": 180, "far": 300})
    result = f.response(incidents, period, targets)
    assert result.on_scene_within_target == f.Share(count=2, of=4)
    assert result.acknowledged_within_timeout == f.Share(count=4, of=4)
    assert f.response([], period, targets).acknowledge.count == 0
    days = f.counts_by_day(incidents, period)
    assert len(days) == 30 and days[0] == ("2026-11-01", 4) and sum(n for _, n in days) == 4
