"""The monthly report a person files: the same month of incidents as tests/test_reports.py, rendered as PDF (drawn
with pdftoppm, read back with pdftotext: the buildings in Chinese and the month's figures), XLSX (opened with
openpyxl: its totals are the API's), CSV and HTML, from the API and from ``firegrid report``."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import create_api_app
from gateway.tools.cli import main
from testkit.api import build_runtime, config_for_tests
from tests.test_reports import (
    DAY,
    EXAMPLE,
    G01,
    MONTH_END,
    MONTH_START,
    VIEWER,
    expected_response,
    month_plan,
    run_month,
)

pytestmark = pytest.mark.skipif(shutil.which("pdftotext") is None, reason="needs poppler-utils (make system-deps)")


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime, clock_ms=lambda: MONTH_END + DAY))) as c:
        yield c


def draw_and_read(pdf_bytes: bytes, workdir: Path) -> tuple[list[int], str]:
    """The PDF drawn to PNG pages by pdftoppm (their sizes) and its text as pdftotext reads it."""
    pdf = workdir / "report.pdf"
    pdf.write_bytes(pdf_bytes)
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(pdf), str(workdir / "page")], check=True, timeout=120)
    pages = [p.stat().st_size for p in sorted(workdir.glob("page*.png"))]
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    return pages, text


async def fetch(client: TestClient, query: str, headers: dict[str, str] = VIEWER) -> Any:
    response = await client.get(f"/api/v1/reports/monthly?{query}", headers=headers)
    assert response.status == 200, await response.text()
    return response


async def test_the_monthly_report_in_every_format_says_what_the_api_says(
    client: TestClient, runtime: Any, tmp_path: Path
) -> None:
    plans = month_plan(runtime)
    run_month(runtime.store, plans)
    expected = expected_response(plans)
    names = {b.id: b.name for b in runtime.config.buildings}
    api = await (await client.get(f"/api/v1/reports/response?from={MONTH_START}&to={MONTH_END}", headers=VIEWER)).json()
    fa = await (
        await client.get(f"/api/v1/reports/false-alarms?from={MONTH_START}&to={MONTH_END}", headers=VIEWER)
    ).json()
    devices = await (
        await client.get(f"/api/v1/reports/devices?from={MONTH_START}&to={MONTH_END}", headers=VIEWER)
    ).json()
    assert api["figures"] == expected

    summary = await (await fetch(client, "month=2026-11")).json()
    assert summary["response"] == expected
    assert summary["figures"]["incidents"] == expected["incidents"]
    assert summary["figures"]["false_alarms"] == fa["false_alarms"]
    assert sum(d["incidents"] for d in summary["per_day"]) == expected["incidents"] and len(summary["per_day"]) == 30
    scoped = await (await fetch(client, "month=2026-11", headers=G01)).json()
    assert scoped["response"] == expected_response(plans, grid="g01")

    # PDF: it renders, and its text has the buildings in Chinese and the month's figures.
    response = await fetch(client, "month=2026-11&format=pdf")
    assert response.headers["Content-Type"] == "application/pdf"
    pages, text = await asyncio.to_thread(draw_and_read, await response.read(), tmp_path)
    assert len(pages) >= 3 and all(size > 2000 for size in pages)
    assert "微型消防站月度报告 2026-11" in text
    false_buildings = {b["key"] for b in fa["by_building"]}
    assert false_buildings and all(names[b] in text for b in false_buildings)
    lines = text.splitlines()

    def line_with(label: str) -> str:
        return next(line for line in lines if label in line)

    assert line_with("警情数（不含演练、测试）").split()[-1] == str(expected["incidents"])
    assert line_with("误报数").split()[-1] == str(fa["false_alarms"])
    ack = expected["acknowledge"]["median_s"]
    assert line_with("确认用时中位数（秒）").split()[-1] == (f"{ack:.1f}" if ack != int(ack) else str(int(ack)))
    share = expected["on_scene_within_target"]["ratio"]
    assert line_with("目标时间内到场比例").split()[-1] == f"{share * 100:.1f}%"
    assert line_with("演练（另计）").split()[-1] == str(expected["drills"])

    # XLSX: opens with openpyxl; the summary's totals are the API's, the per-day sheet adds up, every incident listed.
    response = await fetch(client, "month=2026-11&format=xlsx")
    book = openpyxl.load_workbook(io.BytesIO(await response.read()), read_only=True)
    sheets = book.sheetnames
    assert sheets[0] == "概要"
    rows = list(book["概要"].iter_rows(values_only=True))
    by_key = {row[2]: row[1] for row in rows[2:]}
    assert by_key["incidents"] == api["figures"]["incidents"]
    assert by_key["fire"] == api["figures"]["by_severity"]["fire"]
    assert by_key["ack_median"] == api["figures"]["acknowledge"]["median_s"]
    assert by_key["on_scene_p90"] == api["figures"]["on_scene"]["p90_s"]
    assert by_key["ack_within"] == pytest.approx(api["figures"]["acknowledged_within_timeout"]["ratio"])
    assert by_key["escalations"] == api["figures"]["escalations"]
    assert by_key["drills"] == api["figures"]["drills"] and by_key["tests"] == api["figures"]["tests"]
    assert by_key["false_alarms"] == fa["false_alarms"] and by_key["alarms"] == fa["alarms"]
    assert by_key["false_rate"] == pytest.approx(fa["rate_per_100_per_month"])
    assert by_key["devices"] == devices["figures"]["devices"]
    assert by_key["availability"] == pytest.approx(devices["figures"]["availability"])
    per_day = list(book["每日警情数"].iter_rows(values_only=True))[1:]
    assert len(per_day) == 30 and sum(int(n) for _, n in per_day) == api["figures"]["incidents"]
    incidents = list(book["警情明细"].iter_rows(values_only=True))[1:]
    assert len(incidents) == api["figures"]["incidents"]
    assert sum(1 for row in incidents if row[7] is not None) == api["figures"]["on_scene"]["count"]
    by_building = list(book["各楼栋误报"].iter_rows(values_only=True))[1:]
    assert sum(int(row[2]) for row in by_building) == fa["false_alarms"]
    assert {row[0] for row in by_building} == {names[b] for b in false_buildings}

    # CSV and HTML carry the same.
    text = (await (await fetch(client, "month=2026-11&format=csv")).read()).decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    csv_figures = {row[2]: row[1] for row in rows[2:30] if len(row) == 3}
    assert int(csv_figures["incidents"]) == expected["incidents"]
    page = (await (await fetch(client, "month=2026-11&format=html")).read()).decode()
    assert page.count("data:image/png;base64,") == 4
    assert all(names[b] in page for b in false_buildings)
    english = (await (await fetch(client, "month=2026-11&format=html&lang=en")).read()).decode()
    assert "Micro fire station monthly report 2026-11" in english and "Incidents per day" in english


def test_firegrid_report_writes_the_month_from_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["store"] = {"path": str(tmp_path / "firegrid.sqlite")}
    data["influx"] = {"url": None}
    config_path = tmp_path / "firegrid.yaml"
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    runtime = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    plans = month_plan(runtime)
    run_month(runtime.store, plans)
    runtime.store.close()
    g01 = expected_response(plans, grid="g01")

    out = tmp_path / "out" / "report-g01.xlsx"
    assert main(["report", "--config", str(config_path), "--month", "2026-11", "--grid", "g01", "--out", str(out)]) == 0
    assert f"{g01['incidents']} incidents" in capsys.readouterr().out
    book = openpyxl.load_workbook(out, read_only=True)
    by_key = {row[2]: row[1] for row in list(book[book.sheetnames[0]].iter_rows(values_only=True))[2:]}
    assert by_key["incidents"] == g01["incidents"] and by_key["ack_median"] == g01["acknowledge"]["median_s"]

    english = tmp_path / "report.csv"
    assert (
        main(["report", "--config", str(config_path), "--month", "2026-11", "--lang", "en", "--out", str(english)]) == 0
    )
    assert "Micro fire station monthly report 2026-11" in english.read_text(encoding="utf-8-sig")
    assert main(["report", "--config", str(config_path), "--month", "2026-11", "--out", str(tmp_path / "r.doc")]) == 2
    assert (
        main(["report", "--config", str(config_path), "--month", "2026-11", "--grid", "nope", "--out", str(out)]) == 2
    )


def test_the_report_bench_fills_the_real_schema(tmp_path: Path) -> None:
    """bench/reports.py writes rows as the store does: its config loads, and the store reads its month back."""
    from alerts.store import AlertStore
    from bench.reports import END, START, fill, write_config
    from gateway.config import load_config

    config = load_config(write_config(tmp_path, 3))
    assert len(config.buildings) == 3 and len(config.devices) == 75
    fill(tmp_path / "firegrid.sqlite", buildings=3, incidents=40)
    store = AlertStore(tmp_path / "firegrid.sqlite")
    try:
        read = store.period_facts(start_ms=START, end_ms=END)
    finally:
        store.close()
    fires = [i for i in read.incidents if i.severity.label == "fire"]
    assert len(fires) == 40 and all(i.on_scene_ms is not None and i.station for i in fires)
    assert all(i.acknowledged_ms is not None and i.resolved_ms is not None for i in fires)
