"""Action links: signed for one incident and one recipient, expiring; GET shows a small mobile page and changes
nothing; the page's POST acts, and every action lands on the incident's timeline under the recipient's name."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from alerts.config import LinksConfig
from alerts.links import LinkError, link_for, make_token, verify_token
from alerts.store import AlertStore
from gateway.api import create_api_app
from testkit.api import build_runtime, config_for_tests, inject
from testkit.emulators.scenario import alarm, notify_config, sms_section

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
SECRET = "links-test-secret-0123456789"
NOW_S = 1_800_000_000


def test_token_round_trip_tamper_expiry_and_wrong_secret() -> None:
    token = make_token(SECRET, incident_id=7, recipient="王建国", expires_s=NOW_S + 60)
    claims = verify_token(SECRET, token, now_s=NOW_S)
    assert (claims.incident_id, claims.recipient) == (7, "王建国")
    other = make_token(SECRET, incident_id=8, recipient="王建国", expires_s=NOW_S + 60)
    forged = other.split(".")[0] + "." + token.split(".")[1]  # incident 8's claims with incident 7's signature
    cases = {
        "tampered": forged,
        "malformed": "nodot",
        "bad signature": token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
    }
    for name, bad in cases.items():
        with pytest.raises(LinkError):
            verify_token(SECRET, bad, now_s=NOW_S)
        assert name  # each case raised
    with pytest.raises(LinkError, match="expired"):
        verify_token(SECRET, token, now_s=NOW_S + 61)
    with pytest.raises(LinkError, match="signature"):
        verify_token("another-secret-0123456789", token, now_s=NOW_S)


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["notify"]["links"] = {"base_url": "https://fire.example.cn", "secret": SECRET, "ttl_s": 3600}
    source = tmp_path / "community.yaml"
    source.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    rt = build_runtime(config_for_tests(source, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


def link_path(runtime: Any, incident_id: int, recipient: str, *, now_ms: int | None = None) -> str:
    links: LinksConfig = runtime.config.notify.links
    url = link_for(links, incident_id=incident_id, recipient=recipient, now_ms=now_ms or int(time.time() * 1000))
    return url.removeprefix("https://fire.example.cn")


def incident_of(runtime: Any) -> int:
    changes = inject(runtime, "yg01-sd-01a", {"alarm": True})
    return next(int(c.incident_id) for c in changes if c.type == "alert.raised")


async def test_get_shows_the_page_and_changes_nothing(client: TestClient, runtime: Any) -> None:
    incident_id = incident_of(runtime)
    before = runtime.store.get_incident(incident_id)
    path = link_path(runtime, incident_id, "王建国")
    for agent in ("Mozilla/5.0 (iPhone) MicroMessenger", "DingTalkBot-LinkService", "Slackbot-LinkExpanding"):
        response = await client.get(path, headers={"User-Agent": agent})
        assert response.status == 200
    page = await response.text()
    assert "确认收到" in page and "我正在赶往" in page and "已到场" in page and "王建国" in page
    assert response.headers["Cache-Control"] == "no-store" and response.headers["Referrer-Policy"] == "no-referrer"
    english = await client.get(path + "?lang=en")
    assert "On my way" in await english.text()
    after = runtime.store.get_incident(incident_id)
    assert after.incident.state == before.incident.state == "open"
    assert after.timeline == before.timeline


async def test_post_acts_and_the_timeline_names_the_recipient(client: TestClient, runtime: Any) -> None:
    incident_id = incident_of(runtime)
    path = link_path(runtime, incident_id, "王建国")
    response = await client.post(path, data={"action": "ack", "by": "王建国"})
    assert response.status == 200, await response.text()
    assert "已确认" in await response.text()
    detail = runtime.store.get_incident(incident_id)
    assert detail.incident.state == "acknowledged"
    step = next(e for e in detail.timeline if e.action == "acknowledged")
    assert (step.actor, step.by_name) == ("link:王建国", "王建国")
    assert all(a.acknowledged_by == "link:王建国" for a in detail.alerts)
    # A group robot's link: whoever in the group taps it gives a name; it is on the timeline as given.
    robot = link_path(runtime, incident_id, "robot:grid-wecom")
    response = await client.post(robot, data={"action": "en_route", "by": "赵志愿"})
    assert response.status == 200
    response = await client.post(robot, data={"action": "arrive", "by": "赵志愿"})
    assert response.status == 200
    timeline = runtime.store.get_incident(incident_id).timeline
    steps = [(e.action, e.actor, e.by_name) for e in timeline if e.action in ("en_route", "on_scene")]
    assert steps == [("en_route", "link:robot:grid-wecom", "赵志愿"), ("on_scene", "link:robot:grid-wecom", "赵志愿")]
    assert next(e for e in timeline if e.action == "on_scene").detail == {"via": "link"}
    assert runtime.store.get_incident(incident_id).incident.state == "on_scene"


async def test_expired_tampered_and_bad_actions_are_refused(client: TestClient, runtime: Any) -> None:
    incident_id = incident_of(runtime)
    expired = link_path(runtime, incident_id, "王建国", now_ms=1_000_000_000_000)
    response = await client.get(expired)
    assert response.status == 410 and "链接已过期" in await response.text()
    assert (await client.post(expired, data={"action": "ack"})).status == 410
    good = link_path(runtime, incident_id, "王建国")
    claims, mac = good.removeprefix("/l/").split(".")
    other = link_path(runtime, incident_id + 1, "王建国").removeprefix("/l/").split(".")[0]
    for bad in (f"/l/{other}.{mac}", f"/l/{claims}.{mac[:-4]}AAAA", "/l/garbage"):
        assert (await client.get(bad)).status == 403
        assert (await client.post(bad, data={"action": "ack"})).status == 403
    assert (await client.post(good, data={"action": "delete"})).status == 400
    assert runtime.store.get_incident(incident_id).incident.state == "open"  # nothing of that acted


async def test_voice_receipts_route_refuses_unsigned(client: TestClient) -> None:
    response = await client.post("/api/v1/voice/receipts", json=[{"out_id": "1", "dtmf": "1"}])
    # No voice provider in the example: 404 with a problem document, never an acknowledgement.
    assert response.status == 404 and response.content_type == "application/problem+json"


def test_sms_carries_the_link_only_where_its_template_has_one(tmp_path: Path) -> None:
    links = {"base_url": "https://fire.example.cn", "secret": SECRET}
    sms = sms_section("twilio", "http://127.0.0.1:9")
    sms["templates"] = {"zh": {"text": "{building}{severity} {link}"}, "en": {"text": "{severity} {building}"}}
    store = AlertStore(tmp_path / "a.sqlite", notify=notify_config(sms=sms, links=links))
    store.apply([alarm("yg01-sd-001")], now_ms=int(time.time() * 1000))
    bodies = {r.recipient: r.body for r in store.outbox(channel="sms")}
    zh, en = bodies["王网格"], bodies["李志愿"]  # 李志愿 reads English: a template without {link}
    assert b"https://fire.example.cn/l/" in zh and b"/l/" not in en
    link = orjson.loads(zh)["params"]["link"]
    claims = verify_token(SECRET, link.rsplit("/", 1)[1], now_s=int(time.time()))
    assert claims.recipient == "王网格"
