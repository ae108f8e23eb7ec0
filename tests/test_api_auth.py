"""API access control on real parts: bearer tokens, roles, grid/building scopes, and errors as problem documents.

The runtime is assembled from the real alert store (SQLite in tmp_path), presence, rejections and rules engine
(``testkit.api.build_runtime``); alarms go through the real engine and store (``inject``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import create_api_app
from gateway.ingest.contract import Reason, Rejected
from testkit.api import build_runtime, config_for_tests, inject

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
VIEWER = {"Authorization": "Bearer demo-viewer-token"}
OPERATOR = {"Authorization": "Bearer demo-operator-token"}
ADMIN = {"Authorization": "Bearer demo-admin-token"}
G01 = {"Authorization": "Bearer demo-g01-token"}  # operator scoped to grid g01 (yg01, yg02, yg03, hp01)
G01_BUILDINGS = {"yg01", "yg02", "yg03", "hp01"}


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


def fire(runtime: Any, device: str) -> int:
    changes = inject(runtime, device, {"alarm": True, "obscuration": 6.0})
    raised = [c for c in changes if c.type == "alert.raised"]
    assert raised, f"no alert raised by {device}: {changes}"
    return int(raised[0].alert_id)


async def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    doc = await response.json()
    assert doc["status"] == status and doc["title"] and "type" in doc
    return doc


async def test_no_token_or_bad_token_is_401_problem(client: TestClient) -> None:
    doc = await problem(await client.get("/api/v1/alerts"), 401)
    assert "Bearer" in doc["detail"]
    response = await client.get("/api/v1/alerts", headers={"Authorization": "Bearer nope"})
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await problem(response, 401)
    await problem(await client.get("/api/v1/alerts", headers={"Authorization": "Basic ZGVtbw=="}), 401)
    # a prefix of a real token is not a token
    await problem(await client.get("/api/v1/alerts", headers={"Authorization": "Bearer demo-viewer-toke"}), 401)


async def test_viewer_cannot_acknowledge_operator_can(client: TestClient, runtime: Any) -> None:
    alert_id = fire(runtime, "yg01-sd-01a")
    doc = await problem(await client.post(f"/api/v1/alerts/{alert_id}/ack", headers=VIEWER, json={}), 403)
    assert "operator" in doc["detail"]
    assert runtime.store.get_alert(alert_id).state == "raised"  # nothing changed

    response = await client.post(
        f"/api/v1/alerts/{alert_id}/ack", headers=OPERATOR, json={"by": "张三", "note": "到场"}
    )
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["state"] == "acknowledged" and body["acknowledged_by"] == "张三"
    assert [a["action"] for a in body["audit"]] == ["raised", "acknowledged"]
    assert body["audit"][1]["by"] == "张三" and body["audit"][1]["note"] == "到场"
    assert runtime.store.get_alert(alert_id).state == "acknowledged"


async def test_grid_scoped_token_sees_only_its_grid(client: TestClient, runtime: Any) -> None:
    own = fire(runtime, "yg01-sd-01a")
    other = fire(runtime, "hp02-sd-01a")  # grid g02

    await problem(await client.get("/api/v1/buildings/hp02", headers=G01), 403)
    await problem(await client.get("/api/v1/buildings/nosuch", headers=G01), 403)  # no existence oracle
    await problem(await client.get(f"/api/v1/alerts/{other}", headers=G01), 403)
    await problem(await client.post(f"/api/v1/alerts/{other}/ack", headers=G01, json={}), 403)
    assert runtime.store.get_alert(other).state == "raised"
    await problem(await client.get("/api/v1/alerts?grid=g02", headers=G01), 403)
    await problem(await client.get("/api/v1/devices?building=hp02", headers=G01), 403)

    buildings = (await (await client.get("/api/v1/buildings", headers=G01)).json())["items"]
    assert {b["id"] for b in buildings} == G01_BUILDINGS
    alerts = (await (await client.get("/api/v1/alerts", headers=G01)).json())["items"]
    assert [a["id"] for a in alerts] == [own]
    incidents = (await (await client.get("/api/v1/incidents", headers=G01)).json())["items"]
    assert {i["building"] for i in incidents} == {"yg01"}
    devices = await (await client.get("/api/v1/devices?limit=1000", headers=G01)).json()
    assert {d["building"] for d in devices["items"]} <= G01_BUILDINGS
    # not even in counts: the total is the scoped total
    expected = sum(1 for d in runtime.config.devices if d.building in G01_BUILDINGS)
    assert devices["total"] == expected
    # the unscoped viewer sees both
    everything = (await (await client.get("/api/v1/alerts", headers=VIEWER)).json())["items"]
    assert {a["id"] for a in everything} == {own, other}
    # and the scoped operator may act inside its grid
    response = await client.post(f"/api/v1/alerts/{own}/ack", headers=G01, json={})
    assert response.status == 200
    assert (await response.json())["acknowledged_by"] == "grid-g01"  # defaults to the token's name


async def test_building_scoped_token(tmp_path: Path) -> None:
    tokens = [
        {"name": "one-building", "token": "tok-hp02", "role": "viewer", "buildings": ["hp02"]},
        {"name": "grid-plus", "token": "tok-mixed", "role": "viewer", "grids": ["g03"], "buildings": ["hp02"]},
    ]
    config = config_for_tests(EXAMPLE, tmp_path, http={"tokens": tokens})
    rt = build_runtime(config)
    try:
        async with TestClient(TestServer(create_api_app(rt))) as c:
            items = (await (await c.get("/api/v1/buildings", headers={"Authorization": "Bearer tok-hp02"})).json())[
                "items"
            ]
            assert [b["id"] for b in items] == ["hp02"]
            items = (await (await c.get("/api/v1/buildings", headers={"Authorization": "Bearer tok-mixed"})).json())[
                "items"
            ]
            g03 = {b.id for b in config.buildings if b.grid == "g03"}
            assert {b["id"] for b in items} == g03 | {"hp02"}
    finally:
        rt.store.close()


async def test_rejections_are_scoped(client: TestClient, runtime: Any) -> None:
    runtime.rejections.record(
        Rejected(Reason.NOT_JSON, "bad", building="hp02", device="hp02-sd-01a"), topic="firegrid/hp02/x", now_ms=1
    )
    runtime.rejections.record(
        Rejected(Reason.NOT_JSON, "bad", building="yg01", device="yg01-sd-01a"), topic="firegrid/yg01/x", now_ms=2
    )
    runtime.rejections.record(Rejected(Reason.BAD_TOPIC, "odd"), topic="weird/topic", now_ms=3)
    everything = (await (await client.get("/api/v1/rejections", headers=VIEWER)).json())["items"]
    assert [r["reason"] for r in everything] == ["bad_topic", "not_json", "not_json"]
    scoped = (await (await client.get("/api/v1/rejections", headers=G01)).json())["items"]
    assert [(r["building"], r["reason"]) for r in scoped] == [("yg01", "not_json")]


async def test_tokens_never_logged_or_echoed(
    client: TestClient, runtime: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = "canary-SECRET-4f1e9a"
    for headers in ({"Authorization": f"Bearer {canary}"}, {"Authorization": f"Token {canary}"}):
        response = await client.get("/api/v1/alerts", headers=headers)
        assert canary not in await response.text()
    response = await client.get("/api/v1/whoami", headers=ADMIN)
    body = await response.text()
    assert "demo-admin-token" not in body and (await response.json())["role"] == "admin"
    for token in ("demo-viewer-token", "demo-operator-token", "demo-admin-token"):
        assert token not in (await (await client.get("/openapi.json")).text())
    for record in caplog.records:
        text = record.getMessage() + str(record.__dict__)
        assert canary not in text and "demo-admin-token" not in text
    assert response.cookies == {} and "Set-Cookie" not in response.headers


async def test_every_error_is_a_problem_document(client: TestClient, runtime: Any) -> None:
    await problem(await client.get("/api/v1/nosuch", headers=VIEWER), 404)
    doc = await problem(await client.delete("/api/v1/alerts", headers=VIEWER), 405)
    assert "DELETE" in doc["detail"]
    await problem(await client.get("/api/v1/alerts/999999", headers=VIEWER), 404)
    await problem(await client.get("/api/v1/alerts/not-a-number", headers=VIEWER), 404)
    doc = await problem(await client.get("/api/v1/alerts?limit=0&bogus=1", headers=VIEWER), 400)
    assert {e["loc"] for e in doc["errors"]} == {"query.limit", "query.bogus"}
    await problem(await client.get("/api/v1/alerts?state=raised&state=resolved", headers=VIEWER), 400)
    await problem(await client.get("/api/v1/alerts?since=yesterday", headers=VIEWER), 400)
    alert_id = fire(runtime, "yg01-sd-01a")
    url = f"/api/v1/alerts/{alert_id}/resolve"
    doc = await problem(await client.post(url, headers=OPERATOR, json={"cause": "aliens"}), 422)
    assert doc["errors"][0]["loc"] == "body.cause"
    bad_json = await client.post(url, headers={**OPERATOR, "Content-Type": "application/json"}, data=b"{not json")
    await problem(bad_json, 400)
    await problem(await client.post(url, headers={**OPERATOR, "Content-Type": "text/plain"}, data=b"{}"), 415)
    await problem(await client.post(url, headers=OPERATOR, json=[1, 2]), 422)
    await problem(await client.post(url, headers=OPERATOR, json={"cause": "test", "extra": 1}), 422)
    # the body limit (http.max_body_kb = 64 KiB), with and without a Content-Length
    big = b'{"cause": "test", "note": "' + b"x" * 70_000 + b'"}'
    await problem(await client.post(url, headers={**OPERATOR, "Content-Type": "application/json"}, data=big), 413)

    async def chunks() -> Any:
        for _ in range(20):
            yield b" " * 4096

    await problem(await client.post(url, headers={**OPERATOR, "Content-Type": "application/json"}, data=chunks()), 413)
    assert runtime.store.get_alert(alert_id).state == "raised"
    # a lifecycle step the alert's state does not allow is a conflict
    assert (await client.post(url, headers=OPERATOR, json={"cause": "false_alarm"})).status == 200
    doc = await problem(await client.post(f"/api/v1/alerts/{alert_id}/ack", headers=OPERATOR, json={}), 409)
    assert "resolved" in doc["detail"]


async def test_setup_api_mounts_on_an_existing_application(runtime: Any) -> None:
    from aiohttp import web

    from gateway.api import setup_api

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    setup_api(app, runtime)
    async with TestClient(TestServer(app)) as c:
        assert (await c.get("/healthz")).status == 200
        assert (await c.get("/api/v1/whoami", headers=VIEWER)).status == 200
        await problem(await c.get("/api/v1/whoami"), 401)
        await problem(await c.get("/nope"), 404)
        page = await c.get("/")
        assert page.status == 200 and "app.js" in await page.text()
        assert "default-src 'self'" in page.headers["Content-Security-Policy"]
