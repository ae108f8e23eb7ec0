"""``firegrid qr --config FILE --building B | --grid G --out sheet.pdf``: a printable A4 sheet of QR codes, one per
inspection point, each a signed link to that point's mobile page (``alerts.inspections.links``).

segno makes the codes (pure Python, no image library needed, error correction level M so a sticker that is scuffed
or dirty still scans); reportlab lays out the PDF and draws each code's modules as vector squares (sharp at any
print size); the labels are set in WenQuanYi Micro Hei (Debian's fonts-wqy-microhei), embedded in the file, so the
Chinese prints on any printer.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import segno
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas

from alerts.inspections.config import InspectionPoint
from alerts.inspections.links import point_url
from gateway.config import FiregridConfig, exit_with_problems, load_or_exit

FONT_PATHS = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/wqy-microhei/wqy-microhei.ttc"),
)
FONT = "WQYMicroHei"
KIND_ZH = {"extinguisher": "灭火器", "hydrant": "消火栓", "exit": "安全出口", "shop": "沿街商铺", "generic": "巡查点"}
COLUMNS, ROWS = 2, 3
CODE_MM = 55.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--building", help="the points of one building")
    which.add_argument("--grid", help="the points of every building of one grid")
    parser.add_argument("--out", required=True, help="the PDF to write")
    parser.add_argument("--base-url", help="the gateway's address as phones reach it (default: inspections.public_url)")


def select(config: FiregridConfig, *, building: str | None, grid: str | None) -> list[InspectionPoint]:
    if building is not None:
        return [p for p in config.inspection_points if p.building == building]
    buildings = {b.id for b in config.buildings if b.grid == grid}
    return [p for p in config.inspection_points if p.building in buildings]


def _font() -> str:
    for path in FONT_PATHS:
        if path.exists():
            if FONT not in pdfmetrics.getRegisteredFontNames():
                pdfmetrics.registerFont(TTFont(FONT, str(path), subfontIndex=0))
            return FONT
    raise FileNotFoundError("the CJK font fonts-wqy-microhei is not installed (make system-deps installs it)")


def render(
    points: Sequence[InspectionPoint], *, config: FiregridConfig, secret: str, base_url: str, out: Path
) -> list[str]:
    """Write the sheet; returns the URLs in the order printed."""
    font = _font()
    width, height = A4
    pdf = canvas.Canvas(str(out), pagesize=A4)
    pdf.setTitle("firegrid 巡查二维码")
    cell_w, cell_h = width / COLUMNS, (height - 20 * mm) / ROWS
    urls: list[str] = []
    for index, point in enumerate(points):
        slot = index % (COLUMNS * ROWS)
        if index and slot == 0:
            pdf.showPage()
        col, row = slot % COLUMNS, slot // COLUMNS
        x0, top = col * cell_w, height - 10 * mm - row * cell_h
        url = point_url(base_url, secret, point.id)
        urls.append(url)
        code = segno.make(url, error="m", micro=False)
        size = CODE_MM * mm
        modules = list(code.matrix_iter(scale=1, border=4))
        unit = size / len(modules)
        left, bottom = x0 + (cell_w - size) / 2, top - 12 * mm - size
        pdf.setFillColorRGB(0, 0, 0)
        for r, line in enumerate(modules):
            for c, dark in enumerate(line):
                if dark:
                    pdf.rect(left + c * unit, bottom + (len(modules) - 1 - r) * unit, unit, unit, stroke=0, fill=1)
        building = config.building(point.building)
        name = building.name if building is not None else point.building
        floor = "" if point.floor is None else (f" B{-point.floor}" if point.floor < 0 else f" {point.floor}F")
        pdf.setFont(font, 12)
        pdf.drawCentredString(x0 + cell_w / 2, top - 8 * mm, f"消防安全巡查 · {KIND_ZH[point.kind]}")
        pdf.setFont(font, 10)
        pdf.drawCentredString(x0 + cell_w / 2, bottom - 6 * mm, f"{name}{floor} {point.location}"[:40])
        pdf.drawCentredString(x0 + cell_w / 2, bottom - 11 * mm, f"{point.id} · 扫码巡查 / 上报隐患")
    if not points:
        pdf.setFont(font, 14)
        pdf.drawString(20 * mm, height - 30 * mm, "没有巡查点 (no inspection points)")
    pdf.showPage()
    pdf.save()
    return urls


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config, prog="qr")
    secret = config.inspections.secret_value()
    if secret is None:
        exit_with_problems(["inspections.secret: not set; the QR links are signed with it"], prog="qr")
    if args.building is not None and config.building(args.building) is None:
        exit_with_problems([f"--building: unknown building {args.building!r}"], prog="qr")
    if args.grid is not None and not any(b.grid == args.grid for b in config.buildings):
        exit_with_problems([f"--grid: unknown grid {args.grid!r}"], prog="qr")
    points = select(config, building=args.building, grid=args.grid)
    out = Path(args.out)
    try:
        urls = render(
            points, config=config, secret=secret, base_url=args.base_url or config.inspections.public_url, out=out
        )
    except (OSError, FileNotFoundError) as exc:
        print(f"firegrid qr: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: {len(urls)} QR codes on {max(1, -(-len(urls) // (COLUMNS * ROWS)))} pages")
    return 0
