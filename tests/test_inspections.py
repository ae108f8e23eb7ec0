"""Inspections and hazards on real parts: the SQLite store, the alert store's outbox, the API and mobile pages served
by aiohttp on a loopback port, Pillow decoding real image files.  Time is injected: the deadline checks are asked
"what now?" at chosen instants, never waited for."""

from __future__ import annotations

import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
from PIL import Image

from alerts.inspections.deadlines import HAZARD_RULE, POINT_RULE, hazard_key, point_key
from alerts.inspections.links import point_token, point_url, token_valid
from alerts.inspections.photos import PhotoRefused, clean
from alerts.inspections.records import CheckResult
from alerts.inspections.store import InspectionStore, InvalidHazardStep
from alerts.store import AlertStore
from gateway.api import create_api_app
from gateway.config import FiregridConfig, parse_config
from gateway.ingest.contract import registry_from_config
from gateway.storage.inspections import InspectionDeadlines
from gateway.storage.presence import Presence
from rules.types import Reading
from testkit.api import ServerThread, build_runtime, config_for_tests

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "community.yaml"
DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SECRET = "test-only-qr-secret-0123456789"
GOV_SECRET = "whsec_" + "dGVzdC1vbmx5LWdvdmVybmFuY2Utc2VjcmV0LTMy"
OPERATOR = {"Authorization": "Bearer demo-operator-token"}


def small_config(tmp_path: Path, store_url: str | None = None, **inspections: Any) -> FiregridConfig:
    return parse_config(
        {
            "store": {"path": str(tmp_path / "firegrid.sqlite"), "url": store_url},
            "buildings": [{"id": "b1", "name": "一号楼", "grid": "g1", "floors": 6}],
            "devices": [{"id": "ex1", "building": "b1", "kind": "extinguisher", "floor": 1}],
            "inspections": {"secret": SECRET, **inspections},
            "inspection_points": [
                {"id": "p-exit", "building": "b1", "floor": 1, "kind": "exit", "interval": "monthly"},
                {"id": "p-ext", "building": "b1", "floor": 1, "kind": "extinguisher", "device": "ex1"},
            ],
            "notify": {"governance": {"url": "http://127.0.0.1:9/gov", "secret": GOV_SECRET, "allow_private": True}},
        },
        base_dir=tmp_path,
    )


@pytest.fixture
def parts(tmp_path: Path, store_target: str | Path) -> Iterator[tuple[FiregridConfig, AlertStore, InspectionStore]]:
    """On both backends: the SQLite file, or a PostgreSQL store (photos stay in the local store's directory)."""
    config = small_config(tmp_path, store_url=store_target if isinstance(store_target, str) else None)
    alerts = AlertStore.from_config(config)
    yield config, alerts, InspectionStore(alerts, config=config.inspections)
    alerts.close()


def overdue_alerts(alerts: AlertStore) -> dict[str, Any]:
    return {a.key: a for a in alerts.active_alerts() if a.rule in (POINT_RULE, HAZARD_RULE)}


async def test_an_overdue_point_raises_at_its_deadline_and_clears_when_inspected(
    parts: tuple[FiregridConfig, AlertStore, InspectionStore],
) -> None:
    config, alerts, store = parts
    deadlines = InspectionDeadlines(config=config, store=store)
    assert await deadlines.check(now_ms=T0) == []  # first sight: the deadline counts from now
    due = T0 + 31 * DAY + 3 * DAY  # monthly + grace
    assert await deadlines.check(now_ms=due - 1) == []
    assert overdue_alerts(alerts) == {}
    raised = await deadlines.check(now_ms=due)
    # the unmonitored exit is overdue; the monitored extinguisher too, as it has sent no telemetry (not healthy)
    assert sorted((t.transition, t.key) for t in raised) == [
        ("raised", point_key("p-exit")),
        ("raised", point_key("p-ext")),
    ]
    alert = overdue_alerts(alerts)[point_key("p-exit")]
    assert alert.severity.label == "trouble" and alert.condition == "active" and alert.building == "b1"
    assert alert.raised_ms == due
    assert await deadlines.check(now_ms=due + 60_000) == []  # raised once, never twice
    events = [r.event for r in alerts.outbox(channel="governance")]
    assert events.count("alert.raised") == 2

    point = config.inspection_points[0]
    store.record_inspection(
        point=point,
        grid="g1",
        inspector="王建国",
        results=[CheckResult(item=i, ok=True) for i in point.items],
        note=None,
        photo=None,
        source="qr",
        now_ms=due + DAY,
    )
    cleared = await deadlines.check(now_ms=due + DAY)
    assert [(t.transition, t.key) for t in cleared] == [("cleared", point_key("p-exit"))]
    after = alerts.get_alert(alert.id)
    assert after is not None and after.condition == "cleared" and after.cleared_ms == due + DAY
    assert "inspection.recorded" in [r.event for r in alerts.outbox(channel="governance")]
    # the next deadline counts from the inspection
    nxt = due + DAY + 34 * DAY
    assert point_key("p-exit") not in {t.key for t in await deadlines.check(now_ms=nxt - 1)}
    assert point_key("p-exit") in {t.key for t in await deadlines.check(now_ms=nxt)}


async def test_a_healthy_monitored_extinguisher_is_never_overdue(tmp_path: Path) -> None:
    config = small_config(tmp_path)
    alerts = AlertStore.from_config(config)
    presence = Presence(config=config, db_path=config.resolve_path(config.store.path))
    try:
        store = InspectionStore(alerts, config=config.inspections)
        deadlines = InspectionDeadlines(config=config, store=store, presence=presence)
        await deadlines.check(now_ms=T0)
        late = T0 + 40 * DAY
        ref = registry_from_config(config)["ex1"]
        presence.reading(Reading(ref=ref, ts_ms=late - 1000, values={"pressure_mpa": 1.2, "present": True}))
        presence.sweep(now_ms=late)
        keys = {t.key for t in await deadlines.check(now_ms=late)}
        assert keys == {point_key("p-exit")}
        assert deadlines.due(now_ms=late)["p-ext"].due_ms is None
    finally:
        presence.close()
        alerts.close()


async def test_hazard_lifecycle_audit_events_and_overdue_rectification(
    parts: tuple[FiregridConfig, AlertStore, InspectionStore],
) -> None:
    config, alerts, store = parts
    deadlines = InspectionDeadlines(config=config, store=store)
    point = config.inspection_points[0]
    results = [CheckResult(item=i, ok=n != 1) for n, i in enumerate(point.items)]
    inspection, hazards = store.record_inspection(
        point=point, grid="g1", inspector="李", results=results, note="堆了纸箱", photo=None, source="qr", now_ms=T0
    )
    assert inspection.failed == 1 and len(hazards) == 1
    hazard = hazards[0]
    assert hazard.state == "reported" and hazard.inspection_id == inspection.id
    assert hazard.description == f"{point.items[1]}: 堆了纸箱"
    with pytest.raises(InvalidHazardStep):
        store.step(hazard.id, "verified", by="x", now_ms=T0)
    store.step(hazard.id, "assigned", by="duty", assignee="王建国", deadline_ms=T0 + 2 * DAY, now_ms=T0 + 1)
    store.step(hazard.id, "rectifying", by="王建国", now_ms=T0 + 2)
    assert hazard_key(hazard.id) not in {t.key for t in await deadlines.check(now_ms=T0 + 2 * DAY - 1)}
    late = await deadlines.check(now_ms=T0 + 2 * DAY)
    assert [(t.transition, t.key, t.severity.label) for t in late if t.rule == HAZARD_RULE] == [
        ("raised", hazard_key(hazard.id), "supervisory")
    ]
    with pytest.raises(InvalidHazardStep, match="photo"):
        store.step(hazard.id, "rectified", by="王建国", now_ms=T0 + 3 * DAY)
    photo = store.save_photo(clean(jpeg(), max_bytes=10**6, max_pixels=10**7), building="b1", now_ms=T0)
    store.step(hazard.id, "rectified", by="王建国", photo=photo.id, note="已清走", now_ms=T0 + 3 * DAY)
    cleared = await deadlines.check(now_ms=T0 + 3 * DAY)
    assert [(t.transition, t.key) for t in cleared if t.rule == HAZARD_RULE] == [("cleared", hazard_key(hazard.id))]
    store.step(hazard.id, "reopened", by="duty", note="又堆上了", now_ms=T0 + 4 * DAY)
    store.step(hazard.id, "rectified", by="王建国", photo=photo.id, now_ms=T0 + 5 * DAY)
    final = store.step(hazard.id, "verified", by="duty", now_ms=T0 + 6 * DAY)
    assert final.state == "verified" and final.verified_by == "duty" and final.rectify_photo == photo.id
    record = store.get_hazard(hazard.id)
    assert record is not None
    assert [a.action for a in record.audit] == [
        "reported",
        "assigned",
        "rectifying",
        "rectified",
        "reopened",
        "rectified",
        "verified",
    ]
    gov = [(r.event, orjson.loads(r.body)["data"]) for r in alerts.outbox(channel="governance")]
    steps = [(e, d["state"]) for e, d in gov if e.startswith("hazard.")]
    assert steps == [
        ("hazard.reported", "reported"),
        ("hazard.assigned", "assigned"),
        ("hazard.rectifying", "rectifying"),
        ("hazard.rectified", "rectified"),
        ("hazard.reopened", "rectifying"),
        ("hazard.rectified", "rectified"),
        ("hazard.verified", "verified"),
    ]


def test_qr_tokens_are_per_point() -> None:
    token = point_token(SECRET, "p-exit")
    assert token_valid(SECRET, "p-exit", token)
    assert not token_valid(SECRET, "p-ext", token)
    assert not token_valid("another-secret-0123456789", "p-exit", token)
    assert point_url("http://gw:8080/", SECRET, "p-exit") == f"http://gw:8080/m/p/p-exit?t={token}"


# --- photos ------------------------------------------------------------------------------------------------------


def jpeg(size: tuple[int, int] = (64, 48), *, exif: bool = False) -> bytes:
    image = Image.new("RGB", size, (200, 30, 30))
    out = io.BytesIO()
    if exif:
        data = Image.Exif()
        data[0x010F] = "PhoneMaker"  # Make
        data[0x8825] = {2: (39.0, 54.0, 0.0)}  # GPS: a latitude
        image.save(out, format="JPEG", exif=data)
    else:
        image.save(out, format="JPEG")
    return out.getvalue()


def bomb_png() -> bytes:
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG", optimize=True)
    return out.getvalue()


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'


def test_photos_are_reencoded_without_exif() -> None:
    original = jpeg(exif=True)
    assert b"PhoneMaker" in original
    photo = clean(original, max_bytes=10**6, max_pixels=10**7)
    assert photo.mime == "image/jpeg" and (photo.width, photo.height) == (64, 48)
    assert b"PhoneMaker" not in photo.data and not Image.open(io.BytesIO(photo.data)).getexif()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (SVG, "SVG"),
        (b"GIF89a" + b"\0" * 100, "not a JPEG or PNG"),
        (b"<html><script>x</script></html>", "not a JPEG or PNG"),
        (b"\xff\xd8\xff" + b"garbage" * 10, "could not be read"),
        (jpeg() + b"\0" * 70_000, "limit is 64 KB"),
    ],
)
def test_hostile_photo_bytes_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(PhotoRefused, match=reason):
        clean(data, max_bytes=64 * 1024, max_pixels=10**7)


def test_a_decompression_bomb_is_refused_before_decoding() -> None:
    data = bomb_png()
    assert len(data) < 200_000  # tiny on the wire, 400 million pixels decoded
    with pytest.raises(PhotoRefused, match="decompression bomb"):
        clean(data, max_bytes=10**6, max_pixels=24_000_000)


# --- the mobile page and the API over HTTP ------------------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerThread, Any]]:
    config = config_for_tests(EXAMPLE, tmp_path)
    config.inspections.photo_max_kb = 256
    runtime = build_runtime(config)
    with ServerThread(lambda: create_api_app(runtime)) as srv:
        yield srv, runtime
    runtime.store.close()


def _url(srv: ServerThread, runtime: Any, point: str) -> str:
    return point_url(srv.url, runtime.config.inspections.secret_value(), point)


def _form(point: Any, *, failed: int | None = None) -> dict[str, str]:
    fields = {f"item-{i}": "fail" if i == failed else "ok" for i in range(len(point.items))}
    fields["inspector"] = "王建国"
    return fields


def _photo_dir(runtime: Any) -> Path:
    return Path(runtime.store.path).parent / "photos"


def _rows(runtime: Any, table: str) -> int:
    db = sqlite3.connect(runtime.store.path)
    try:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        db.close()


def test_the_mobile_page_is_small_chinese_and_scriptless(server: tuple[ServerThread, Any]) -> None:
    srv, runtime = server
    page = requests.get(_url(srv, runtime, "sc01-shop-12"), timeout=10)
    assert page.status_code == 200 and "消防安全巡查" in page.text and "沿街商铺" in page.text
    assert "<script" not in page.text and len(page.content) < 8_000
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert "form-action 'self'" in page.headers["Content-Security-Policy"]
    english = requests.get(_url(srv, runtime, "sc01-shop-12") + "&lang=en", timeout=10)
    assert "Fire safety inspection" in english.text


def test_a_qr_link_cannot_submit_for_another_point(server: tuple[ServerThread, Any]) -> None:
    srv, runtime = server
    other = runtime.config.inspection_points[1]
    token = point_token(runtime.config.inspections.secret_value(), "sc01-shop-12")
    forged = f"{srv.url}/m/p/{other.id}?t={token}"
    assert requests.get(forged, timeout=10).status_code == 403
    response = requests.post(forged, files={"x": ("", b"")}, data=_form(other), timeout=10)
    assert response.status_code == 403 and "二维码无效" in response.text
    assert requests.post(f"{srv.url}/m/p/{other.id}?t=", data=_form(other), timeout=10).status_code == 403
    assert requests.post(f"{srv.url}/m/p/{other.id}/hazard?t={token}", timeout=10).status_code == 403
    assert _rows(runtime, "inspections") == 0 and _rows(runtime, "hazards") == 0
    assert refusals(runtime, "token") == 4


def refusals(runtime: Any, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value("firegrid_inspection_refusals_total", {"reason": reason})
    return float(value or 0)


HOSTILE = [
    ("oversized", "big.jpg", jpeg((2000, 2000)) + b"\0" * 300_000, 413, "limit of 256 KB"),
    ("wrong type", "photo.jpg", b"GIF89a" + b"\0" * 200, 422, "not a JPEG or PNG"),
    ("script in an SVG", "photo.svg", SVG, 422, "SVG"),
    ("path in the file name", "../../etc/cron.d/x.jpg", jpeg(), 422, "must not contain a path"),
    ("decompression bomb", "bomb.png", bomb_png(), 422, "decompression bomb"),
]


@pytest.mark.parametrize(("what", "name", "data", "status", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_uploads_are_refused_and_leave_nothing_on_disk(
    server: tuple[ServerThread, Any], what: str, name: str, data: bytes, status: int, reason: str
) -> None:
    srv, runtime = server
    point = next(p for p in runtime.config.inspection_points if p.id == "sc01-shop-12")
    response = requests.post(
        _url(srv, runtime, point.id),
        data=_form(point, failed=0),
        files={"photo": (name, data, "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == status, what
    assert reason in response.text, (what, response.text[:500])
    assert 'value="王建国"' in response.text  # the form comes back with the person's answers
    photos = _photo_dir(runtime)
    assert not photos.exists() or list(photos.iterdir()) == []
    assert _rows(runtime, "photos") == 0 and _rows(runtime, "inspections") == 0 and _rows(runtime, "hazards") == 0
    assert refusals(runtime, "photo") == 1  # counted
    api = requests.post(f"{srv.url}/api/v1/photos", data=data, headers=OPERATOR, timeout=30)
    if name.startswith(".."):  # the API takes no file name; the bytes themselves are a fine photo
        assert api.status_code == 201
        return
    assert api.status_code in (413, 422) and reason.split(" ")[0] in api.text
    assert refusals(runtime, "photo") == 2
    assert not photos.exists() or list(photos.iterdir()) == []


def test_a_photo_is_served_back_only_as_a_reencoded_image(server: tuple[ServerThread, Any]) -> None:
    srv, runtime = server
    uploaded = requests.post(f"{srv.url}/api/v1/photos", data=jpeg(exif=True), headers=OPERATOR, timeout=10)
    assert uploaded.status_code == 201
    photo = uploaded.json()
    served = requests.get(f"{srv.url}/api/v1/photos/{photo['id']}", headers=OPERATOR, timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"] == "image/jpeg"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.headers["Content-Disposition"] == f'inline; filename="{photo["id"]}.jpg"'
    assert "sandbox" in served.headers["Content-Security-Policy"]
    assert b"PhoneMaker" not in served.content and served.content.startswith(b"\xff\xd8\xff")
    assert [p.name for p in _photo_dir(runtime).iterdir()] == [f"{photo['id']}.jpg"]
    viewer = {"Authorization": "Bearer demo-viewer-token"}
    assert requests.get(f"{srv.url}/api/v1/photos/ph-{'0' * 32}", headers=viewer, timeout=10).status_code == 404
    assert requests.get(f"{srv.url}/api/v1/photos/{photo['id']}", timeout=10).status_code == 401


def test_submitting_from_the_mobile_page_records_the_inspection_and_its_hazard(
    server: tuple[ServerThread, Any],
) -> None:
    srv, runtime = server
    point = next(p for p in runtime.config.inspection_points if p.id == "sc01-shop-12")
    assert "上次巡查: 尚未巡查" in requests.get(_url(srv, runtime, point.id), timeout=10).text
    response = requests.post(
        _url(srv, runtime, point.id),
        data=_form(point, failed=2) | {"note": "插线板串接"},
        files={"photo": ("IMG_0001.JPG", jpeg(exif=True), "image/jpeg")},
        timeout=30,
    )
    assert response.status_code == 201 and "已提交" in response.text
    assert "上次巡查: 20" in requests.get(_url(srv, runtime, point.id), timeout=10).text
    listed = requests.get(f"{srv.url}/api/v1/inspections?point={point.id}", headers=OPERATOR, timeout=10).json()
    assert len(listed["items"]) == 1 and listed["items"][0]["failed"] == 1 and listed["items"][0]["source"] == "qr"
    hazards = requests.get(f"{srv.url}/api/v1/hazards?open=true", headers=OPERATOR, timeout=10).json()["items"]
    assert [(h["point"], h["category"], h["state"]) for h in hazards] == [(point.id, "shop", "reported")]
    assert hazards[0]["photo"] == listed["items"][0]["photo"] is not None
    # a hazard reported on the point's second page
    reported = requests.post(
        _url(srv, runtime, point.id).replace("?t=", "/hazard?t="),
        data={"category": "blocked_exit", "description": "后门被货物堵死", "reporter": "居民 赵"},
        files={"photo": ("", b"", "application/octet-stream")},
        timeout=30,
    )
    assert reported.status_code == 201
    hazards = requests.get(f"{srv.url}/api/v1/hazards?point={point.id}", headers=OPERATOR, timeout=10).json()
    assert {h["source"] for h in hazards["items"]} == {"inspection", "mobile"}
    # the grid-scoped token of g01 does not see a g03 shop's hazards
    scoped = {"Authorization": "Bearer demo-g01-token"}
    assert requests.get(f"{srv.url}/api/v1/hazards", headers=scoped, timeout=10).json()["items"] == []
    figures = requests.get(f"{srv.url}/api/v1/inspections/compliance", headers=OPERATOR, timeout=10).json()
    g03 = next(g for g in figures["grids"] if g["grid"] == "g03")
    assert g03["inspected"] == 1 and g03["points"] == 3 and figures["open_hazards"] == 2


async def test_the_service_commits_overdue_alerts_through_its_pipeline(tmp_path: Path) -> None:
    """As ``firegrid run`` wires it: the deadline check hands its transitions to the pipeline's commit (the same path
    as the engine's), and a restarted engine does not adopt the overdue alert as one of its own."""
    import asyncio

    from gateway.service.service import Service

    config = small_config(tmp_path)
    service = Service(config)
    loop = asyncio.get_running_loop()
    committed = asyncio.Event()
    service.store.add_listener(
        lambda change: loop.call_soon_threadsafe(committed.set) if change.type == "alert.raised" else None
    )
    pipeline = asyncio.create_task(service.pipeline.run())
    try:
        assert await service.deadlines.check(now_ms=T0) == []
        raised = await service.deadlines.check(now_ms=T0 + 34 * DAY)
        assert {t.key for t in raised} == {point_key("p-exit"), point_key("p-ext")}
        await asyncio.wait_for(committed.wait(), 10)
        assert set(overdue_alerts(service.store)) == {point_key("p-exit"), point_key("p-ext")}
    finally:
        service.pipeline.stop()
        await pipeline
        await service.close()
    again = Service(config)
    try:
        held = {a.key for a in again.engine.active()}
        assert not held & {point_key("p-exit"), point_key("p-ext")}
    finally:
        await again.close()


def test_the_api_records_inspections_and_keeps_hazard_steps_in_order_and_scope(
    server: tuple[ServerThread, Any],
) -> None:
    srv, _runtime = server
    api = f"{srv.url}/api/v1"
    points = requests.get(f"{api}/inspection-points?grid=g03", headers=OPERATOR, timeout=10).json()["items"]
    assert {p["id"] for p in points} == {"sc01-shop-12", "sc01-shop-15", "yl01-exit-1f"}
    shop = next(p for p in points if p["id"] == "sc01-shop-15")
    assert shop["checklist"][0] == "燃气管道、阀门无泄漏" and shop["overdue"] is False and shop["due_ms"] > 0
    wrong = {"point": "sc01-shop-15", "inspector": "x", "results": [{"item": "not on the list", "ok": True}]}
    assert requests.post(f"{api}/inspections", json=wrong, headers=OPERATOR, timeout=10).status_code == 422
    results = [{"item": item, "ok": n != 0} for n, item in enumerate(shop["checklist"])]
    body = {"point": "sc01-shop-15", "inspector": "巡查员 周", "results": results}
    created = requests.post(f"{api}/inspections", json=body, headers=OPERATOR, timeout=10)
    assert created.status_code == 201
    hazard = created.json()["hazards"][0]
    assert hazard["state"] == "reported" and hazard["category"] == "shop"
    hid = hazard["id"]
    verify = requests.post(f"{api}/hazards/{hid}/verify", json={}, headers=OPERATOR, timeout=10)
    assert verify.status_code == 409 and "rectified" in verify.json()["detail"]
    assert requests.post(f"{api}/hazards/{hid}/rectify", json={}, headers=OPERATOR, timeout=10).status_code == 422
    g01 = {"Authorization": "Bearer demo-g01-token"}  # an operator of another grid
    assigned = requests.post(f"{api}/hazards/{hid}/assign", json={"to": "x"}, headers=g01, timeout=10)
    assert assigned.status_code == 404
    viewer = {"Authorization": "Bearer demo-viewer-token"}
    assert requests.post(f"{api}/hazards/{hid}/assign", json={"to": "x"}, headers=viewer, timeout=10).status_code == 403
    ok = requests.post(f"{api}/hazards/{hid}/assign", json={"to": "李秀英", "days": 2}, headers=OPERATOR, timeout=10)
    assert ok.status_code == 200 and ok.json()["state"] == "assigned" and ok.json()["overdue"] is False
    elsewhere = {"building": "yg01", "point": "sc01-shop-15", "category": "x", "description": "y"}
    assert requests.post(f"{api}/hazards", json=elsewhere, headers=OPERATOR, timeout=10).status_code == 422


def test_month_figures_count_compliance_and_time_to_rectify(
    parts: tuple[FiregridConfig, AlertStore, InspectionStore],
) -> None:
    from alerts.inspections.deadlines import point_due
    from alerts.inspections.figures import month_figures
    from alerts.inspections.records import PointState

    config, _alerts, store = parts
    exit_point, ext_point = config.inspection_points
    h1 = store.report_hazard(
        building="b1", grid="g1", floor=1, point=None, location=None, category="exit", description="堵",
        photo=None, reporter="x", source="api", now_ms=T0,
    )  # fmt: skip
    photo = store.save_photo(clean(jpeg(), max_bytes=10**6, max_pixels=10**7), building="b1", now_ms=T0)
    store.step(h1.id, "assigned", by="d", assignee="a", deadline_ms=T0 + DAY, now_ms=T0)
    store.step(h1.id, "rectified", by="a", photo=photo.id, now_ms=T0 + 6 * 3_600_000)
    h2 = store.report_hazard(
        building="b1", grid="g1", floor=1, point=None, location=None, category="exit", description="又堵",
        photo=None, reporter="x", source="api", now_ms=T0,
    )  # fmt: skip
    store.step(h2.id, "assigned", by="d", assignee="a", deadline_ms=T0 + DAY, now_ms=T0)
    dues = {
        exit_point.id: point_due(exit_point, PointState(exit_point.id, T0 - 40 * DAY, None), grace_ms=0, healthy=False),
        ext_point.id: point_due(ext_point, PointState(ext_point.id, T0 - 40 * DAY, None), grace_ms=0, healthy=True),
    }
    figures = month_figures(
        points=config.inspection_points,
        grid_of=lambda _building: "g1",
        inspected=set(),
        dues=dues,
        hazards=store.list_hazards(),
        start_ms=T0,
        end_ms=T0 + 31 * DAY,
        now_ms=T0 + 2 * DAY,
    )
    (grid,) = figures.grids
    # the healthy monitored extinguisher counts as inspected; the exit, never inspected, is overdue
    assert (grid.grid, grid.points, grid.inspected, grid.overdue, grid.rate) == ("g1", 2, 1, 1, 0.5)
    assert (figures.open_hazards, figures.overdue_hazards, figures.rectified) == (2, 1, 1)
    assert figures.mean_hours_to_rectify == 6.0


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nno end"),
        ("multipart/form-data; boundary=xyz", b"\xff\xfe garbage \x00" * 50),
        ("multipart/form-data", b"--\r\n"),
        ("application/x-www-form-urlencoded", b"inspector=a&item-0=ok"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n"
         + b"x" * 10_000 + b"\r\n--xyz--\r\n"),
    ],
)  # fmt: skip
def test_malformed_forms_are_refused_not_crashed_on(
    server: tuple[ServerThread, Any], content_type: str, body: bytes
) -> None:
    srv, runtime = server
    for suffix in ("", "/hazard"):
        url = _url(srv, runtime, "sc01-shop-12").replace("?t=", f"{suffix}?t=")
        response = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=10)
        assert response.status_code == 400 and "无法识别" in response.text
    assert _rows(runtime, "inspections") == 0 and _rows(runtime, "hazards") == 0
