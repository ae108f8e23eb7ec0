"""``firegrid qr``: the sheet renders (poppler's pdftoppm, as a print shop would rasterise it) and every code on it
decodes (zxing-cpp, a real QR decoder) to the signed URL of its point, and to nothing else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from PIL import Image

from alerts.inspections.links import point_url
from gateway.config import load_config
from gateway.tools.cli import main

zxingcpp = pytest.importorskip("zxingcpp")
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"

pytestmark = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils (make system-deps)")


def decode_pages(pdf: Path, tmp_path: Path) -> list[str]:
    subprocess.run(["pdftoppm", "-r", "150", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=120)
    found: list[str] = []
    pages = sorted(tmp_path.glob("page-*.png"))
    assert pages, "pdftoppm rendered no page"
    for page in pages:
        found.extend(result.text for result in zxingcpp.read_barcodes(Image.open(page)))
    return found


def test_a_grid_sheet_decodes_to_each_points_signed_url(tmp_path: Path) -> None:
    out = tmp_path / "g01.pdf"
    assert main(["qr", "--config", str(EXAMPLE), "--grid", "g01", "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"%PDF")
    config = load_config(EXAMPLE)
    secret = config.inspections.secret_value()
    assert secret is not None
    buildings = {b.id for b in config.buildings if b.grid == "g01"}
    expected = [
        point_url(config.inspections.public_url, secret, p.id)
        for p in config.inspection_points
        if p.building in buildings
    ]
    assert len(expected) == 4
    assert sorted(decode_pages(out, tmp_path)) == sorted(expected)


def test_a_building_sheet_over_two_pages_with_another_base_url(tmp_path: Path) -> None:
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data["inspection_points"] = [
        {"id": f"sc01-shop-{n:02d}", "building": "sc01", "floor": 1, "location": f"{n}号铺", "kind": "shop"}
        for n in range(1, 9)
    ]
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "sc01.pdf"
    base = "https://gw.example.org:8443"
    args = ["qr", "--config", str(config_path), "--building", "sc01", "--out", str(out), "--base-url", base]
    assert main(args) == 0
    secret = load_config(config_path).inspections.secret_value()
    assert secret is not None
    decoded = decode_pages(out, tmp_path)
    assert len(list(tmp_path.glob("page-*.png"))) == 2
    assert sorted(decoded) == sorted(point_url(base, secret, f"sc01-shop-{n:02d}") for n in range(1, 9))


def test_without_a_secret_or_with_an_unknown_building_it_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.pdf"
    assert main(["qr", "--config", str(EXAMPLE), "--building", "nope", "--out", str(out)]) == 2
    assert "unknown building 'nope'" in capsys.readouterr().err
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    del data["inspections"]["secret"]
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    assert main(["qr", "--config", str(config_path), "--grid", "g01", "--out", str(out)]) == 2
    assert "inspections.secret" in capsys.readouterr().err and not out.exists()
