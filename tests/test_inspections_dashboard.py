"""The dashboard's inspections panel in a real browser: this month's compliance per grid and the open hazards with
their deadlines (an overdue one marked), in Chinese and, after the language switch, in English."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from alerts.inspections.records import CheckResult
from alerts.inspections.store import InspectionStore
from gateway.api import create_api_app
from testkit.api import ServerThread, build_runtime, config_for_tests, now_ms

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "community.yaml"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
DAY = 86_400_000

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # pragma: no cover - make test installs it
    pytest.skip("Chromium is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    runtime = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    seed(runtime)
    with ServerThread(lambda: create_api_app(runtime)) as srv:
        yield srv
    runtime.store.close()


def seed(runtime: Any) -> None:
    """Two of g03's three points inspected this month, one with a failed item; that hazard is past its deadline."""
    store = InspectionStore(runtime.store, config=runtime.config.inspections)
    points = {p.id: p for p in runtime.config.inspection_points}
    t = now_ms()
    for point_id, failed in (("sc01-shop-12", None), ("sc01-shop-15", 1)):
        point = points[point_id]
        _, hazards = store.record_inspection(
            point=point,
            grid="g03",
            inspector="李明",
            results=[CheckResult(item=i, ok=n != failed) for n, i in enumerate(point.items)],
            note=None,
            photo=None,
            source="qr",
            now_ms=t - 2 * DAY,
        )
    store.step(hazards[0].id, "assigned", by="duty", assignee="李明", deadline_ms=t - DAY, now_ms=t - 2 * DAY)


def post(base: str, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        base + "/api/v1" + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer demo-operator-token", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def test_the_panel_shows_compliance_per_grid_and_overdue_hazards(server: ServerThread, browser: Any) -> None:
    page = browser.new_page(viewport={"width": 1600, "height": 1200}, locale="zh-CN")
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    page.goto(server.url + "/")
    page.fill("#token", "demo-viewer-token")
    page.click("#login-form button[type=submit]")
    page.locator("#app").wait_for(state="visible")
    loaded = time.monotonic()
    g03 = page.locator('#inspection-compliance tr[data-grid="g03"]')
    g03.wait_for()
    assert g03.locator("td").all_inner_texts() == ["g03", "3", "2", "0", "67%"]
    hazard = page.locator("#open-hazards li[data-hazard]")
    hazard.wait_for()
    assert hazard.count() == 1
    text = hazard.inner_text()
    assert "东风菜市场" in text and "李明" in text and "整改期限" in text and "已逾期" in text
    page.locator("#inspections").screenshot(path=str(ARTIFACTS / "inspections-panel.png"))

    # Hazard changes follow the live stream: a hazard reported and assigned through the API is on the panel within
    # a few seconds, long before the panel's 30-second safety poll (the page was loaded just now).
    reported = post(server.url, "/hazards", {"building": "yg01", "category": "exit", "description": "安全出口堵塞"})
    fresh = page.locator(f'#open-hazards li[data-hazard="{reported["id"]}"]')
    fresh.wait_for(timeout=5_000)
    assert "安全出口堵塞" in fresh.inner_text() and "待分派" in fresh.inner_text()
    page.get_by_text("未闭环隐患 (2)").wait_for(timeout=5_000)
    post(server.url, f"/hazards/{reported['id']}/assign", {"to": "李明", "days": 3})
    page.locator(f'#open-hazards li[data-hazard="{reported["id"]}"]', has_text="已分派").wait_for(timeout=5_000)
    assert "李明" in fresh.inner_text() and "整改期限" in fresh.inner_text()
    assert time.monotonic() - loaded < 25, "the panel may have been refreshed by its poll, not the stream"
    page.click("#lang")
    page.get_by_text("Open hazards (2)").wait_for()
    assert "overdue" in page.locator("#open-hazards li[data-hazard]", has_text="东风菜市场").inner_text()
    assert errors == []
