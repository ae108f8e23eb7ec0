"""The dashboard in a real browser: Playwright driving Debian's Chromium, against a real server on a free port.

A fire goes through the real rules engine and alert store (whose listener feeds the SSE hub); the page must show it
without reloading, acknowledge and dispatch it through the API, and follow the live stream across a reconnect.
A screenshot is saved to ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.api import create_api_app
from gateway.ingest.contract import registry_from_config
from rules.types import Reading, StatusChange
from testkit.api import ServerThread, build_runtime, config_for_tests, inject, now_ms

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "community.yaml"
ARTIFACTS = ROOT / "test-artifacts"
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
UI_TIMEOUT_MS = 10_000  # generous for a loaded 2-core CI box; the page normally updates in well under a second

playwright_sync = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():  # pragma: no cover - make test installs it
    pytest.skip("Chromium is not installed (make test installs it)", allow_module_level=True)


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Any]:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    seed(rt)
    yield rt
    rt.store.close()


def seed(rt: Any) -> None:
    """A lived-in community: most devices reporting, one offline, one low battery, an extinguisher under pressure,
    and a heat detector warming up (for the sparkline)."""
    registry = registry_from_config(rt.config)
    t = now_ms()
    for device in rt.config.devices:
        if device.building in ("yg01", "yg02", "hp01", "hp02"):
            rt.presence.reading(Reading(ref=registry[device.id], ts_ms=t - 1000, values={"battery": 88.0}))
    rt.presence.reading(Reading(ref=registry["yg02-sd-01b"], ts_ms=t, values={"battery": 9.0}))
    rt.presence.status(StatusChange(ref=registry["hp01-sd-01a"], ts_ms=t, online=False))
    rt.presence.reading(Reading(ref=registry["hp02-ex-01"], ts_ms=t, values={"pressure_mpa": 0.6, "present": True}))
    for i in range(30):
        celsius = 22.0 + (i / 29) ** 2 * 20
        rt.presence.reading(
            Reading(ref=registry["yg01-ht-01"], ts_ms=t - (30 - i) * 20_000, values={"celsius": celsius})
        )
    rt.presence.flush()
    rt.presence.sweep(now_ms=t)


@pytest.fixture
def server(runtime: Any) -> Iterator[ServerThread]:
    with ServerThread(lambda: create_api_app(runtime)) as srv:
        yield srv


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_sync.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def open_dashboard(browser: Any, server: Any, token: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": 1600, "height": 1000}, locale="zh-CN")
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(UI_TIMEOUT_MS)
    page.goto(server.url + "/")
    page.locator("#login").wait_for(state="visible")
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.locator("#app").wait_for(state="visible")
    page.locator("#conn[data-connected=true]").wait_for()
    return page, errors


def test_fire_appears_live_and_is_acknowledged_and_dispatched(browser: Any, server: ServerThread, runtime: Any) -> None:
    expect = playwright_sync.expect
    page, errors = open_dashboard(browser, server, "demo-operator-token")
    cards = page.locator(".building")
    expect(cards).to_have_count(len(runtime.config.buildings))
    expect(page.locator("#no-alerts")).to_be_visible()
    expect(page.locator("#offline li[data-device=hp01-sd-01a]")).to_have_count(1)
    expect(page.locator("#battery li[data-device=yg02-sd-01b]")).to_have_count(1)
    expect(page.locator("#oos li[data-device=hp02-ex-01]")).to_have_count(1)
    expect(page.locator("h1")).to_contain_text("值班大屏")  # Chinese by default

    # A fire through the real engine and store; the page must show it without a reload.
    changes = inject(runtime, "yg01-sd-09a", {"alarm": True, "obscuration": 8.2})
    alert_id = next(c.alert_id for c in changes if c.type == "alert.raised")
    item = page.locator(f".alert[data-alert-id='{alert_id}']")
    expect(item).to_have_attribute("data-severity", "fire")
    expect(item).to_have_attribute("data-state", "raised")
    expect(page.locator(".building[data-building=yg01]")).to_have_attribute("data-severity", "fire")
    # a lesser alert arrives later but the fire stays on top (newest fire first)
    inject(runtime, "yg02-sd-02a", {"tamper": True})
    expect(page.locator(".alert")).to_have_count(2)
    expect(page.locator(".alert").first).to_have_attribute("data-alert-id", str(alert_id))

    item.locator(".act-ack").click()
    expect(item).to_have_attribute("data-state", "acknowledged")
    assert runtime.store.get_alert(alert_id).acknowledged_by == "micro-station"

    item.locator(".act-dispatch").click()
    item.locator(".form-to").fill("微型消防站一队")
    item.locator(".form-note").fill("3 分钟内到场")
    item.locator(".form-ok").click()
    expect(item).to_have_attribute("data-state", "dispatched")
    expect(item.locator(".alert-meta")).to_contain_text("微型消防站一队")
    stored = runtime.store.get_alert(alert_id)
    assert stored.state == "dispatched" and stored.dispatched_to == "微型消防站一队"

    # the heat detector's trend
    page.locator("#trend-building").select_option("yg01")
    page.locator("#trend-device").select_option("yg01-ht-01")
    expect(page.locator("#sparkline polyline")).to_have_count(1)
    expect(page.locator("#trend-info")).to_contain_text("celsius")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # English toggle, and the choice survives a reload
    page.click("#lang")
    expect(page.locator("h1")).to_contain_text("duty room")
    expect(item.locator(".alert-state")).to_have_text("Dispatched")
    page.screenshot(path=str(ARTIFACTS / "dashboard-en.png"), full_page=True)
    page.reload()
    expect(page.locator("h1")).to_contain_text("duty room")

    item = page.locator(f".alert[data-alert-id='{alert_id}']")
    item.locator(".act-resolve").click()
    item.locator(".form-cause").select_option("real_fire")
    item.locator(".form-ok").click()
    expect(page.locator(f".alert[data-alert-id='{alert_id}']")).to_have_count(0)
    assert runtime.store.get_alert(alert_id).cause == "real_fire"
    assert errors == [], errors


def test_reconnects_by_itself(browser: Any, server: ServerThread, runtime: Any) -> None:
    expect = playwright_sync.expect
    page, errors = open_dashboard(browser, server, "demo-viewer-token")
    # Drop every live connection server-side (what a gateway restart or a proxy timeout does to the stream).
    server.loop.call_soon_threadsafe(runtime.hub.close)
    page.locator("#conn[data-connected=false]").wait_for()
    page.locator("#conn[data-connected=true]").wait_for()
    changes = inject(runtime, "hp02-sd-02a", {"alarm": True})
    alert_id = next(c.alert_id for c in changes if c.type == "alert.raised")
    expect(page.locator(f".alert[data-alert-id='{alert_id}']")).to_have_count(1)
    # a viewer gets no buttons
    expect(page.locator(".alert .act-ack")).to_have_count(0)
    assert errors == [], errors


def test_bad_token_is_asked_again(browser: Any, server: ServerThread) -> None:
    page = browser.new_page()
    page.goto(server.url + "/")
    page.fill("#token", "not-a-token")
    page.click("#login-form button[type=submit]")
    playwright_sync.expect(page.locator("#login-error")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('firegrid.token')") is None
    assert page.context.cookies() == []


def test_fire_published_over_mqtt_reaches_the_dashboard_of_a_running_gateway(
    browser: Any, mosquitto: Any, tmp_path: Path
) -> None:
    """End to end: ``firegrid run`` as a real process with a real Mosquitto; a detector publishes an alarm; the
    dashboard served by that gateway shows it live and acknowledges it."""
    import json
    import os
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    import paho.mqtt.publish as mqtt_publish
    import yaml

    from testkit.api import free_port

    expect = playwright_sync.expect
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    port = free_port()
    data["mqtt"].update(url=mosquitto.url, client_id="dashboard-e2e")
    data["store"] = {"path": str(tmp_path / "firegrid.sqlite")}
    data["http"]["listen"] = f"127.0.0.1:{port}"
    data["log"] = {"level": "info", "format": "text"}
    config_path = tmp_path / "firegrid.yaml"
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    log_path = tmp_path / "gateway.log"
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                return bool(json.loads(response.read())["checks"]["mqtt"]["ok"])
        except (urllib.error.URLError, OSError, KeyError, ValueError):
            return False

    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(config_path)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
    try:
        deadline = time.monotonic() + 30
        while not ready():
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "gateway not ready:\n" + log_path.read_text()[-3000:]
            time.sleep(0.1)
        page, errors = open_dashboard(browser, _Url(base), "demo-operator-token")
        expect(page.locator("#no-alerts")).to_be_visible()
        mqtt_publish.single(
            "firegrid/yg01/yg01-sd-09a/telemetry",
            json.dumps({"alarm": True, "obscuration": 9.0, "seq": 1}),
            qos=1,
            hostname="127.0.0.1",
            port=mosquitto.port,
        )
        item = page.locator(".alert[data-severity=fire]")
        expect(item).to_have_count(1)
        expect(page.locator(".building[data-building=yg01]")).to_have_attribute("data-severity", "fire")
        item.locator(".act-ack").click()
        expect(item).to_have_attribute("data-state", "acknowledged")
        request = urllib.request.Request(
            base + "/api/v1/alerts?state=acknowledged", headers={"Authorization": "Bearer demo-viewer-token"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            items = json.loads(response.read())["items"]
        assert [(a["device"], a["acknowledged_by"]) for a in items] == [("yg01-sd-09a", "micro-station")]
        assert errors == [], errors
        # SIGTERM with the dashboard's live stream still open: the gateway ends the stream and exits cleanly.
        proc.terminate()
        assert proc.wait(20) == 0, log_path.read_text()[-3000:]
        log_text = log_path.read_text(encoding="utf-8", errors="replace")
        assert "demo-operator-token" not in log_text and "demo-viewer-token" not in log_text
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class _Url:
    """Just the ``url`` of a server that is not a ServerThread (the gateway process)."""

    def __init__(self, url: str) -> None:
        self.url = url


def test_docs_page_renders_offline_without_csp_violations(browser: Any, server: ServerThread) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    requests_made: list[str] = []
    page.on("request", lambda request: requests_made.append(request.url))
    page.goto(server.url + "/docs")
    playwright_sync.expect(page.locator("section.op")).not_to_have_count(0)
    # the stylesheet applied (the Content-Security-Policy would block an inline one)
    assert page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor") == "rgb(29, 39, 51)"
    assert all(url.startswith(server.url) for url in requests_made), requests_made  # nothing from the internet
    assert errors == [], errors
