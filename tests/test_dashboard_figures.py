"""The dashboard's figures strip in a real browser (Playwright, Debian's Chromium): today and this month from a month
of incidents in the real store, with the clock injected into the API; a new fire raised through the store shows up
in the strip without a reload; the language button switches its labels.  Screenshot: test-artifacts/figures.png.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.api import create_api_app
from rules.types import AlertTransition, Severity
from testkit.api import ServerThread, build_runtime, config_for_tests
from tests.test_dashboard import ARGS, ARTIFACTS, CHROMIUM, UI_TIMEOUT_MS
from tests.test_reports import EXAMPLE, HOUR, MONTH_START, ZONE, median, month_plan, run_month

pytestmark = pytest.mark.browser
playwright_sync = pytest.importorskip("playwright.sync_api")

NOW = MONTH_START + 20 * 24 * HOUR + 23 * HOUR + 30 * 60_000  # 2026-11-21 23:30 in Shanghai


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def test_the_strip_shows_today_and_this_month_and_follows_new_incidents(browser: Any, runtime: Any) -> None:
    expect = playwright_sync.expect
    plans = [p for p in month_plan(runtime) if p.raised < NOW]  # what has happened by the injected "now"
    run_month(runtime.store, plans)
    day_start = int(datetime(2026, 11, 21, tzinfo=ZONE).timestamp() * 1000)
    real = [p for p in plans if p.kind == "real" and p.raised >= MONTH_START]
    today = [p for p in real if p.raised >= day_start]
    assert today, "the plan should have incidents on the 21st"
    month_ack = median([float(p.ack_s) for p in real if p.ack_s is not None])

    with ServerThread(lambda: create_api_app(runtime, clock_ms=lambda: NOW)) as server:
        page = browser.new_page(viewport={"width": 1600, "height": 1000}, locale="zh-CN")
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(server.url + "/")
        page.fill("#token", "demo-viewer-token")
        page.click("#login-form button[type=submit]")
        strip = page.locator("#figures-strip")
        expect(strip).to_be_visible()
        month_row = strip.locator("[data-period=month]")
        today_row = strip.locator("[data-period=today]")
        expect(month_row.locator("[data-figure=incidents] .fig-value")).to_have_text(str(len(real)))
        expect(today_row.locator("[data-figure=incidents] .fig-value")).to_have_text(str(len(today)))
        assert month_ack is not None
        expect(month_row.locator("[data-figure=ack] .fig-value")).to_have_text(
            f"{math.floor(month_ack + 0.5)}秒"
        )  # JS rounds half up
        expect(month_row.locator(".fig-period")).to_have_text("本月")
        expect(strip.locator("[data-figure=online] .fig-value")).to_have_text(
            f"0/{len(runtime.config.devices)}"  # nothing has reported to this store's presence
        )

        # A new fire, committed through the store: the strip follows it live (its own stream, no reload).
        runtime.store.apply(
            [
                AlertTransition(
                    transition="raised",
                    key="smoke-detector-alarm:yg03:live",
                    rule="smoke-detector-alarm",
                    severity=Severity.FIRE,
                    building="yg03",
                    floor=1,
                    device="yg03-sd-01a",
                    ts_ms=NOW - 1000,
                    reason="smoke",
                    grid="g01",
                )
            ],
            now_ms=NOW - 1000,
        )
        expect(today_row.locator("[data-figure=incidents] .fig-value")).to_have_text(str(len(today) + 1))
        expect(month_row.locator("[data-figure=incidents] .fig-value")).to_have_text(str(len(real) + 1))

        page.click("#lang")
        expect(month_row.locator(".fig-period")).to_have_text("This month")
        expect(month_row.locator("[data-figure=ack] .fig-label")).to_have_text("Median ack")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "figures.png"))
        assert errors == []
        page.close()
