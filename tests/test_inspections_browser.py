"""码上安全 end to end, as people do it: a phone-sized Chromium (Playwright, Debian's Chromium) opens a point's QR URL
served by ``firegrid run`` (a real process, a real Mosquitto), marks one checklist item failed, attaches a photo and
submits.  The inspection is listed, a hazard exists; assigning it, rectifying it with a photo and verifying it show
on its record and reach the governance platform (a real receiver checking every Standard Webhooks signature)."""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from alerts.inspections.links import point_url
from testkit.gateway import Gateway, wait_for, write_config
from testkit.services import MosquittoServer
from testkit.webhooks import ThreadedReceiver, new_whsec

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
SECRET = "test-only-qr-link-secret-42"
TOKEN = "test-admin"
UI_TIMEOUT_MS = 15_000

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # pragma: no cover - make test installs it
    pytest.skip("Chromium is not installed (make test installs it)", allow_module_level=True)


def api(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> Any:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    request.add_header("Content-Type", "image/jpeg" if raw is not None else "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def photo_file(tmp_path: Path, name: str, colour: tuple[int, int, int]) -> Path:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(out, format="JPEG")
    path = tmp_path / name
    path.write_bytes(out.getvalue())
    return path


@pytest.fixture
def governance() -> Iterator[ThreadedReceiver]:
    with ThreadedReceiver(new_whsec("governance-test"), path="/gov") as receiver:
        yield receiver


@pytest.fixture
def gateway(tmp_path: Path, mosquitto: MosquittoServer, governance: ThreadedReceiver) -> Iterator[Gateway]:
    from testkit.services import free_port

    port = free_port()
    config_path, port = write_config(
        tmp_path,
        mqtt_url=mosquitto.url,
        influx_url=None,
        devices=4,
        buildings=2,
        http_port=port,
        extra={
            "inspections": {"secret": SECRET, "public_url": f"http://127.0.0.1:{port}"},
            "inspection_points": [
                {
                    "id": "b00-ext-1f",
                    "building": "b00",
                    "floor": 1,
                    "location": "一层东侧楼梯口",
                    "kind": "extinguisher",
                    "responsible": "王建国",
                }
            ],
            "notify": {"governance": {"url": governance.url, "secret": governance.secret, "allow_private": True}},
        },
    )
    gw = Gateway(config_path, port, tmp_path / "gateway.log").start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def test_a_phone_inspects_by_qr_and_the_hazard_goes_round_the_loop(
    tmp_path: Path, gateway: Gateway, governance: ThreadedReceiver, browser: Any
) -> None:
    port = gateway.http_port
    url = point_url(f"http://127.0.0.1:{port}", SECRET, "b00-ext-1f")
    phone = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True, locale="zh-CN"
    )
    page = phone.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url)
    assert page.locator("h1").inner_text().startswith("灭火器")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
    items = page.locator(".item")
    count = items.count()
    assert count == 5  # the extinguisher's default checklist
    for i in range(count):
        page.check(f'input[name="item-{i}"][value="{"fail" if i == 0 else "ok"}"]')
    page.fill('input[name="inspector"]', "王建国")
    page.fill('textarea[name="note"]', "压力表指针在红区")
    page.set_input_files('input[name="photo"]', str(photo_file(tmp_path, "IMG_0001.jpg", (180, 20, 20))))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "mobile-inspection.png"), full_page=True)
    page.click("button[type=submit]")
    page.get_by_text("已提交，谢谢！").wait_for()
    assert page.locator("#hazards li").count() == 1
    assert errors == []

    inspections = api(port, "GET", "/inspections?point=b00-ext-1f")["items"]
    assert len(inspections) == 1
    inspection = inspections[0]
    assert inspection["inspector"] == "王建国" and inspection["failed"] == 1 and inspection["photo"]
    assert [r["ok"] for r in inspection["results"]] == [False, True, True, True, True]
    hazards = api(port, "GET", "/hazards?open=true")["items"]
    assert len(hazards) == 1
    hazard = hazards[0]
    assert hazard["state"] == "reported" and hazard["inspection_id"] == inspection["id"]
    assert hazard["description"].startswith("压力表指针在绿区")

    hid = hazard["id"]
    api(port, "POST", f"/hazards/{hid}/assign", {"to": "王建国", "days": 3, "note": "今天更换"})
    fixed = photo_file(tmp_path, "fixed.jpg", (20, 160, 20)).read_bytes()
    photo = api(port, "POST", "/photos", raw=fixed)
    api(port, "POST", f"/hazards/{hid}/rectify", {"photo": photo["id"], "note": "已更换新灭火器"})
    api(port, "POST", f"/hazards/{hid}/verify", {"note": "现场核查通过"})
    record = api(port, "GET", f"/hazards/{hid}")
    assert record["state"] == "verified" and record["rectify_photo"] == photo["id"] and record["assignee"] == "王建国"
    assert [a["action"] for a in record["audit"]] == ["reported", "assigned", "rectified", "verified"]

    wanted = ["inspection.recorded", "hazard.reported", "hazard.assigned", "hazard.rectified", "hazard.verified"]

    def arrived() -> list[str]:
        types = [json.loads(a.body)["type"] for a in governance.arrivals]
        return [t for t in types if t.startswith(("inspection.", "hazard."))]

    wait_for(lambda: arrived() == wanted, timeout=20, what="the governance platform to hear every step")
    assert governance.rejected == []  # every one signed validly
    last = json.loads(governance.arrivals[-1].body)
    assert last["data"]["id"] == hid and last["data"]["state"] == "verified" and last["data"]["by"] == "t"
    # the phone's page for the point shows no script, and the dashboard's figures count the inspection
    figures = api(port, "GET", "/inspections/compliance")
    assert figures["grids"] == [{"grid": "g0", "points": 1, "inspected": 1, "rate": 1.0, "overdue": 0}]
    assert figures["rectified_this_month"] == 1 and figures["open_hazards"] == 0
    phone.close()
