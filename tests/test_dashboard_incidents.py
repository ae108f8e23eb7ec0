"""The duty screen works in incidents (一屏知晓 / 一屏跟踪), in a real browser against ``firegrid run``.

Real parts throughout: the gateway as its own process with a real Mosquitto, Debian's Chromium driven by
Playwright, and the Aliyun SMS emulator (which checks every request's signature as Aliyun documents it) as the
members' phones.  A confirmed fire on one floor is one card; acknowledging, dispatching (the nearest covering
station, chosen by the gateway), the members' signed ``<code> 到`` reply and resolving all happen on that card, and
its timeline lists every step with its time and actor.  The page clock is Playwright's, so the ticking clocks are
driven, never waited for.  The zh and en screens are saved to ``docs/dashboard-zh.png`` and
``docs/dashboard-en.png`` when ``FIREGRID_UPDATE_SCREENSHOTS=1`` is set (else to the test's temporary directory).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from testkit.emulators.aliyun import AliyunSms

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "community.yaml"
DOCS = ROOT / "docs"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 10_000
FIRST_CARD_MS = 1_000  # a fire is on the duty screen within a second of the detector's message
OPERATOR = "demo-operator-token"
VIEWER = "demo-viewer-token"
UNITS = re.compile(r"MPa|%/m|°C|dBm")
LATIN = re.compile(r"[A-Za-z]")

# The station of 阳光花园, about 150 m from 1号楼, and one across the district (about 3.5 km) covering the same grid.
NEAR = {"id": "st-yg", "name": "阳光花园微型消防站", "location": {"lat": 31.2310, "lon": 121.4712}}
FAR = {"id": "st-hp", "name": "和平里微型消防站", "location": {"lat": 31.2520, "lon": 121.4980}}
MEMBERS = {"队员甲": "+8613800000011", "队员乙": "+8613800000012", "队员丙": "+8613800000013"}

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # pragma: no cover - make test installs it
    pytest.skip("Chromium is not installed (make test installs it)", allow_module_level=True)


class LoopThread:
    """An event loop in a daemon thread, for the emulator (Playwright's sync API owns the test's thread)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="emulators", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def sms() -> Iterator[tuple[AliyunSms, LoopThread]]:
    loop = LoopThread()
    emulator = AliyunSms(
        access_key_id="LTAI5tDemoOnly",
        access_key_secret="demo-only-access-key-secret",
        sign_name="东风社区",
        templates={"SMS_480000001", "SMS_480000002"},
    )
    loop.run(emulator.start())
    try:
        yield emulator, loop
    finally:
        loop.run(emulator.stop())
        loop.stop()


def gateway_config(tmp_path: Path, *, mqtt_url: str, sms_url: str, port: int) -> Path:
    import yaml

    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["mqtt"].update(url=mqtt_url, client_id="duty-screen-e2e")
    data["store"] = {"path": str(tmp_path / "firegrid.sqlite")}
    data["http"]["listen"] = f"127.0.0.1:{port}"
    data["log"] = {"level": "info", "format": "text"}
    # Every building on the map: a small grid of blocks around 阳光花园 1号楼 (31.2300, 121.4700).
    for n, building in enumerate(data["buildings"]):
        building["location"] = {
            "lat": round(31.2300 + (n // 4) * 0.006, 6),
            "lon": round(121.4700 + (n % 4) * 0.007, 6),
        }
    notify = data["notify"]
    notify["sms"]["endpoint"] = sms_url + "/"
    notify.pop("webhooks", None)  # nobody listens on the demo's ports here
    notify.pop("governance", None)
    notify["roster"] += [
        {"name": name, "phone": phone, "role": "station_member", "grids": ["g01"]} for name, phone in MEMBERS.items()
    ]
    equipment = [{"name": "灭火器", "count": 8}, {"name": "消防水带", "count": 2}]
    data["stations"] = [
        NEAR | {"grids": ["g01"], "members": ["队员甲", "队员乙"], "leader": "杨磊", "equipment": equipment},
        FAR | {"grids": ["g01", "g02"], "members": ["队员丙"], "equipment": equipment[:1]},
    ]
    data["dispatch"] = {"travel_speed_kmh": 15}
    path = tmp_path / "firegrid.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def gateway(mosquitto: Any, sms: tuple[AliyunSms, LoopThread], tmp_path: Path) -> Iterator[str]:
    from testkit.api import free_port

    port = free_port()
    config = gateway_config(tmp_path, mqtt_url=mosquitto.url, sms_url=sms[0].url, port=port)
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gateway.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        deadline = time.monotonic() + 30
        while not _ready(base):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gateway not ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.1)  # a separate process: there is no event to await but its readiness probe
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
            return bool(json.loads(response.read())["checks"]["mqtt"]["ok"])
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


def get(base: str, path: str, token: str = VIEWER) -> Any:
    request = urllib.request.Request(base + "/api/v1" + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def post(base: str, path: str, body: dict[str, Any], token: str = OPERATOR) -> Any:
    request = urllib.request.Request(
        base + "/api/v1" + path,
        data=json.dumps(body, ensure_ascii=False).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def sms_reply(base: str, *, phone: str, text: str) -> Any:
    """A member's reply as the SMS provider forwards it: signed with the inbound secret (Standard Webhooks)."""
    import yaml
    from standardwebhooks.webhooks import Webhook

    secret = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))["notify"]["sms"]["inbound_secret"]
    body = json.dumps({"from": phone, "text": text}, ensure_ascii=False)
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": "msg_reply_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign("msg_reply_1", now, body),
        "Content-Type": "application/json",
    }
    request = urllib.request.Request(base + "/api/v1/sms/inbound", data=body.encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def publish(mosquitto: Any, device: str, building: str, values: dict[str, Any], seq: int) -> None:
    import paho.mqtt.publish as mqtt_publish

    mqtt_publish.single(
        f"firegrid/{building}/{device}/telemetry",
        json.dumps(values | {"seq": seq}),
        qos=1,
        hostname="127.0.0.1",
        port=mosquitto.port,
    )


def untranslated_in_zh(texts: list[str]) -> list[str]:
    return [text for text in texts if LATIN.search(UNITS.sub("", text))]


def phones_paged(emulator: AliyunSms) -> dict[str, int]:
    counts: dict[str, int] = {}
    for message in list(emulator.messages):
        counts[message["phone"]] = counts.get(message["phone"], 0) + 1
    return counts


def test_one_fire_is_one_card_through_the_whole_loop(
    mosquitto: Any, sms: tuple[AliyunSms, LoopThread], gateway: str, tmp_path: Path
) -> None:
    expect = playwright_sync.expect
    emulator, loop = sms
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200}, locale="zh-CN")
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.set_default_timeout(UI_TIMEOUT_MS)
            page.clock.install()  # the page's clock runs from now, and the test may move it forward
            page.goto(gateway + "/")
            page.fill("#token", OPERATOR)
            page.click("#login-form button[type=submit]")
            page.locator("#conn[data-connected=true]").wait_for()
            expect(page.locator("#no-incidents")).to_be_visible()
            # the stations panel and the map, from the config
            expect(page.locator(".station")).to_have_count(2)
            near = page.locator(f".station[data-station={NEAR['id']}]")
            expect(near).to_have_attribute("data-committed", "false")
            expect(near.locator(".member[data-on-duty=true]")).to_have_count(2)
            expect(page.locator("#map .map-building")).to_have_count(12)
            expect(page.locator("#map .map-station")).to_have_count(2)
            # each station's 15-minute rescue circle, from dispatch.travel_speed_kmh (15 km/h: 3.75 km), drawn to
            # the map's own scale bar
            stations = get(gateway, "/stations")["items"]
            assert {s["id"]: (s["travel_speed_kmh"], s["rescue_radius_m"]) for s in stations} == {
                NEAR["id"]: (15, 3750),
                FAR["id"]: (15, 3750),
            }
            expect(page.locator("#map .map-rescue")).to_have_count(2)
            circle = page.locator(f"#map .map-rescue[data-station={NEAR['id']}]")
            expect(circle).to_have_attribute("data-radius-m", "3750")
            bar = page.locator("#map .map-scale")
            bar_px = float(bar.get_attribute("x2") or "0") - float(bar.get_attribute("x1") or "0")
            label = page.locator("#map .map-scale-label").text_content() or ""
            bar_m = float(label.split()[0]) * (1000 if label.endswith("km") else 1)
            assert float(circle.get_attribute("r") or "0") == pytest.approx(3750 * bar_px / bar_m, rel=1e-6)
            near_station = page.locator(f"#map .map-station[data-station={NEAR['id']}] rect")
            assert float(circle.get_attribute("cx") or "0") == pytest.approx(
                float(near_station.get_attribute("x") or "0") + 7
            )
            expect(page.locator("#map .map-rescue-legend")).to_contain_text("15分钟救援圈")

            # A fire on the 2nd floor of 阳光花园 1号楼: two smoke detectors, alarm and obscuration each.
            publish(mosquitto, "yg01-sd-02a", "yg01", {"alarm": True, "obscuration": 8.2}, 1)
            cards = page.locator(".incident")
            expect(cards).to_have_count(1, timeout=FIRST_CARD_MS)
            card = cards.first
            expect(card).to_have_attribute("data-severity", "fire")
            publish(mosquitto, "yg01-sd-02b", "yg01", {"alarm": True, "obscuration": 7.4}, 1)
            expect(card).to_have_attribute("data-confirmed", "true")
            expect(cards).to_have_count(1)  # five or six alerts, one card
            expect(card.locator(".inc-where")).to_contain_text("阳光花园 1号楼")
            expect(card.locator(".inc-where")).to_contain_text("2层")
            expect(card.locator(".inc-devices")).to_contain_text("2 个设备")
            expect(card).to_have_attribute("data-state", "open")
            expect(page.locator("#map .map-building[data-building=yg01]")).to_have_attribute("data-severity", "fire")
            incident_id = card.get_attribute("data-incident-id")
            assert incident_id is not None
            # From here on this incident's own card: detectors still in alarm after the resolve below may open a new
            # incident, whose card would then be the first.
            card = page.locator(f".incident[data-incident-id='{incident_id}']")
            expect(card).to_have_count(1)
            # the card names the incident by its SMS reply code (what members answer "<code> 到" with), as listed
            listed_incident = next(i for i in get(gateway, "/incidents")["items"] if str(i["id"]) == incident_id)
            ack_code = listed_incident["ack_code"]
            assert ack_code and ack_code == get(gateway, f"/incidents/{incident_id}")["ack_code"]
            expect(card.locator(".inc-code")).to_have_text(f"回复码 {ack_code}")

            # the elapsed time ticks with the page's clock
            elapsed = card.locator(".inc-elapsed")
            expect(elapsed).to_have_attribute("data-elapsed-s", re.compile(r"^\d+$"))
            before = int(elapsed.get_attribute("data-elapsed-s") or "0")
            page.clock.fast_forward("01:30")
            expect(elapsed).not_to_have_attribute("data-elapsed-s", str(before))
            assert int(elapsed.get_attribute("data-elapsed-s") or "0") >= before + 90

            # acknowledge once: every alert of the incident is acknowledged
            card.locator(".inc-ack").click()
            expect(card).to_have_attribute("data-state", "acknowledged")
            alerts = get(gateway, f"/incidents/{incident_id}")["alerts"]
            # two detectors in alarm and the confirmed fire they make (obscuration needs 5 s more of readings)
            assert {a["rule"] for a in alerts} == {"smoke-detector-alarm", "fire-confirmed"}, alerts
            assert len(alerts) == 3 and {a["state"] for a in alerts} == {"acknowledged"}, alerts
            listed = get(gateway, "/alerts?building=yg01&active=true")["items"]
            assert sorted(a["id"] for a in listed) == sorted(a["id"] for a in alerts)

            # dispatch without naming a station: the gateway picks the nearest covering one and pages its members
            card.locator(".inc-dispatch").click()
            expect(card.locator(".inc-form .form-station")).to_have_value("")
            card.locator(".inc-form .form-ok").click()
            expect(card).to_have_attribute("data-state", "dispatched")
            expect(card.locator(".inc-station-name")).to_contain_text(NEAR["name"])
            expect(near).to_have_attribute("data-committed", "true")
            expect(page.locator("#map .map-route")).to_have_count(1)
            on_duty = [MEMBERS["队员甲"], MEMBERS["队员乙"]]
            national = [phone.removeprefix("+86") for phone in on_duty]
            loop.run(emulator.wait_for(lambda: all(phones_paged(emulator).get(n) for n in national)))
            detail = get(gateway, f"/incidents/{incident_id}")
            assert detail["station"] == NEAR["id"]
            paged_steps = [s for s in detail["timeline"] if s["action"] == "paged"]
            assert len(paged_steps) >= 2, detail["timeline"]
            # the station's clock against its 3-minute target, on the page's clock (90 s ahead of the gateway's)
            clock = card.locator(".inc-clock")
            expect(clock).to_have_attribute("data-overdue", "false")
            expect(clock).to_contain_text("目标 03:00")
            page.clock.fast_forward("01:40")
            expect(clock).to_have_attribute("data-overdue", "true")
            expect(clock).to_contain_text("已超时")

            # the zh and en duty screens, with the card open on its timeline
            card.locator(".inc-more").click()
            expect(card.locator(".timeline li[data-action=dispatched]")).to_have_count(1)
            expect(card.locator(".inc-alert")).to_have_count(len(alerts))
            reasons = page.locator(".alert-reason, .inc-alert-reason").all_inner_texts()
            assert reasons and untranslated_in_zh(reasons) == [], reasons
            # a hazard a grid worker reported, on the 码上安全 panel by the live stream
            hazard = post(
                gateway,
                "/hazards",
                {"building": "yg02", "floor": 1, "category": "exit", "description": "消防通道堆放杂物"},
            )
            post(gateway, f"/hazards/{hazard['id']}/assign", {"to": "王建国", "days": 3})
            expect(page.locator(f'#open-hazards li[data-hazard="{hazard["id"]}"]')).to_contain_text("王建国")
            shots = DOCS if os.environ.get("FIREGRID_UPDATE_SCREENSHOTS") else tmp_path
            page.screenshot(path=str(shots / "dashboard-zh.png"), full_page=True)
            page.click("#lang")
            expect(page.locator("h1")).to_contain_text("duty room")
            expect(card.locator(".inc-state")).to_have_text("Dispatched")
            english = page.locator(".alert-reason, .inc-alert-reason").all_inner_texts()
            assert english and not any(re.search(r"[\u4e00-\u9fff]", t) for t in english), english
            page.screenshot(path=str(shots / "dashboard-en.png"), full_page=True)
            page.click("#lang")
            expect(page.locator("h1")).to_contain_text("值班大屏")

            # a member's signed "<code> 到" reply puts the station on scene; the card follows live
            code = next(m["params"]["code"] for m in emulator.messages if m["phone"] == national[0])
            assert code == ack_code  # the code on the card is the one in the members' pages
            sms_reply(gateway, phone=on_duty[0], text=f"{code} 到")
            expect(card).to_have_attribute("data-state", "on_scene")
            expect(clock).to_have_attribute("data-overdue", "false")
            expect(clock).to_contain_text("到场用时")
            # exactly one page per on-duty member of the dispatched station, none to the far station's
            assert {n: phones_paged(emulator).get(n, 0) for n in national} == {n: 1 for n in national}
            assert phones_paged(emulator).get(MEMBERS["队员丙"].removeprefix("+86"), 0) == 0

            # resolve with a cause: every alert is closed; the card stays, dimmed, with its whole timeline
            card.locator(".inc-resolve").click()
            card.locator(".inc-form .form-cause").select_option("real_fire")
            card.locator(".inc-form .form-note").fill("厨房油锅起火，已扑灭")
            card.locator(".inc-form .form-ok").click()
            expect(card).to_have_attribute("data-state", "resolved")
            detail = get(gateway, f"/incidents/{incident_id}")
            assert {a["state"] for a in detail["alerts"]} == {"resolved"}, detail["alerts"]
            assert {a["cause"] for a in detail["alerts"]} == {"real_fire"}
            timeline = card.locator(".timeline li")
            for action in ("opened", "acknowledged", "dispatched", "paged", "on_scene", "resolved"):
                expect(card.locator(f".timeline li[data-action={action}]")).not_to_have_count(0)
            for n in range(timeline.count()):
                step = timeline.nth(n)
                assert step.locator(".tl-time").inner_text().strip(), step.inner_text()
                assert step.locator(".tl-by").inner_text().strip(), step.inner_text()
            expect(card.locator(".timeline li[data-action=acknowledged] .tl-by")).to_have_text("micro-station")
            expect(card.locator(".timeline li[data-action=on_scene] .tl-detail")).to_contain_text("短信回复")
            expect(card.locator(".timeline li[data-action=resolved] .tl-detail")).to_contain_text("真实火情")
            expect(near).to_have_attribute("data-committed", "false")
            assert emulator.errors == [], emulator.errors
            assert errors == [], errors
        finally:
            browser.close()


def test_a_fire_on_one_floor_is_one_card_with_its_reasons_in_the_pages_language(tmp_path: Path) -> None:
    """In-process (the engine and store of one runtime, the API on a free port): six alerts of one floor make one
    card; its facts come from the alerts; every reason on the page is in the page's language; the clock ticks."""
    from gateway.api import create_api_app
    from testkit.api import ServerThread, build_runtime, config_for_tests, inject, now_ms

    expect = playwright_sync.expect
    runtime = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    try:
        with ServerThread(lambda: create_api_app(runtime)) as server, playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000}, locale="zh-CN")
                errors: list[str] = []
                page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.set_default_timeout(UI_TIMEOUT_MS)
                page.clock.install()
                page.goto(server.url + "/")
                page.fill("#token", VIEWER)
                page.click("#login-form button[type=submit]")
                page.locator("#conn[data-connected=true]").wait_for()
                expect(page.locator("#no-incidents")).to_be_visible()

                t0 = now_ms()
                inject(runtime, "yg01-sd-02a", {"alarm": True, "obscuration": 8.2}, ts_ms=t0)
                inject(runtime, "yg01-sd-02b", {"alarm": True, "obscuration": 7.4}, ts_ms=t0 + 500)
                inject(runtime, "yg01-sd-02a", {"alarm": True, "obscuration": 9.0}, ts_ms=t0 + 6000)
                inject(runtime, "yg01-sd-02b", {"alarm": True, "obscuration": 8.8}, ts_ms=t0 + 6500)
                active = [a for a in runtime.store.active_alerts() if a.building == "yg01"]
                assert len(active) >= 5, [a.rule for a in active]
                assert len({a.incident_id for a in active}) == 1

                cards = page.locator(".incident")
                expect(cards).to_have_count(1)
                card = cards.first
                expect(card).to_have_attribute("data-confirmed", "true")
                expect(card).to_have_attribute("data-severity", "fire")
                expect(card.locator(".inc-where")).to_contain_text("阳光花园 1号楼 · 2层")
                expect(card.locator(".inc-devices")).to_have_text("2 个设备")
                expect(card.locator(".inc-confirmed")).to_have_text("已确认火警")
                expect(page.locator(".alert")).to_have_count(len(active))  # each detector's alert stays reachable
                expect(card.locator(".inc-actions button")).to_have_count(1)  # a viewer: no steps, only 详情
                expect(card.locator(".inc-more")).to_have_text("详情")

                elapsed = card.locator(".inc-elapsed")
                expect(elapsed).to_have_attribute("data-elapsed-s", re.compile(r"^\d+$"))
                before = int(elapsed.get_attribute("data-elapsed-s") or "0")
                page.clock.fast_forward("02:00")
                expect(elapsed).not_to_have_attribute("data-elapsed-s", str(before))
                assert int(elapsed.get_attribute("data-elapsed-s") or "0") >= before + 120
                expect(elapsed).to_contain_text("已持续 02:")

                # an operator: the card's steps, and expanding it shows its alerts, each with its reason in Chinese
                page.click("#logout")
                page.fill("#token", OPERATOR)
                page.click("#login-form button[type=submit]")
                card = page.locator(".incident").first
                expect(card.locator(".inc-ack")).to_have_count(1)
                expect(card.locator(".inc-arrive")).to_have_count(0)  # not dispatched yet
                card.locator(".inc-more").click()
                expect(card.locator(".inc-alert")).to_have_count(len(active))
                reasons = page.locator(".alert-reason, .inc-alert-reason").all_inner_texts()
                assert len(reasons) == 2 * len(active)
                assert untranslated_in_zh(reasons) == [], reasons
                assert any(r.startswith("确认火警：2层有 2 个探测器") for r in reasons), reasons
                page.click("#lang")
                expect(card.locator(".inc-state")).to_have_text("Open")
                english = page.locator(".alert-reason, .inc-alert-reason").all_inner_texts()
                assert not any(re.search(r"[\u4e00-\u9fff]", t) for t in english), english
                assert any(r.startswith("Confirmed fire: 2 detectors in alarm on floor 2") for r in english), english
                page.screenshot(path=str(tmp_path / "duty-screen.png"), full_page=True)
                assert errors == [], errors
            finally:
                browser.close()
    finally:
        runtime.store.close()
