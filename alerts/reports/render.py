"""The monthly report as a file: HTML, PDF, XLSX or CSV bytes from a :class:`~alerts.reports.monthly.MonthlyReport`.

Libraries, each imported only here and only when a report is rendered (the gateway never pays for them otherwise):

* matplotlib (Agg, no display) draws the four charts as PNG: the reference charting library of the Python world,
  with CJK text through any TrueType font;
* reportlab (platypus) lays out the PDF and embeds the CJK font, so the Chinese renders on any reader;
* openpyxl writes the XLSX (write-only mode: a month of 50,000 incidents streams without holding the workbook).

Chinese needs a CJK font: Debian's fonts-wqy-microhei (``FIREGRID_CJK_FONT`` names another TrueType/TTC file).
"""

from __future__ import annotations

import csv
import html
import io
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from alerts.reports.monthly import MonthlyReport

FONT_CANDIDATES: Final = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
)
HTML_INCIDENT_ROWS: Final = 1000
PDF_INCIDENT_ROWS: Final = 200
PDF_BUILDING_ROWS: Final = 30

_chart_lock = threading.Lock()  # matplotlib's font registry and rc settings are process-wide


class ReportError(Exception):
    """The report cannot be rendered (no CJK font for a Chinese report, an unknown format)."""


def cjk_font() -> Path:
    """The CJK font file the charts and the PDF use."""
    named = os.environ.get("FIREGRID_CJK_FONT")
    for candidate in ([named] if named else []) + list(FONT_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ReportError("no CJK font found: install fonts-wqy-microhei, or set FIREGRID_CJK_FONT to a TrueType file")


def render(report: MonthlyReport, fmt: str) -> bytes:
    if fmt == "html":
        return render_html(report)
    if fmt == "pdf":
        return render_pdf(report)
    if fmt == "xlsx":
        return render_xlsx(report)
    if fmt == "csv":
        return render_csv(report)
    raise ReportError(f"unknown report format {fmt!r} (html, pdf, xlsx or csv)")


CONTENT_TYPES: Final = {
    "html": "text/html; charset=utf-8",
    "pdf": "application/pdf",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "csv": "text/csv; charset=utf-8",
}


# --- values ------------------------------------------------------------------------------------------------------


def show(value: object, key: str = "") -> str:
    """A figure as people read it: shares as percentages, seconds to one decimal, none as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if key in ("ack_within", "on_scene_within", "availability", "extinguishers_ok"):
            return f"{value * 100:.1f}%"
        return f"{value:.1f}" if value != int(value) else str(int(value))
    return str(value)


# --- charts ------------------------------------------------------------------------------------------------------


def charts(report: MonthlyReport) -> dict[str, bytes]:
    """The four charts as PNG: per_day, distribution, false_by_building, availability_by_grid."""
    from matplotlib import font_manager
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    font = cjk_font()
    out: dict[str, bytes] = {}
    with _chart_lock:
        font_manager.fontManager.addfont(str(font))
        prop = font_manager.FontProperties(fname=str(font))

        def figure(title: str) -> tuple[Any, Any]:
            fig = Figure(figsize=(8, 3.2), dpi=110)
            ax = fig.add_subplot()
            ax.set_title(title, fontproperties=prop)
            ax.grid(axis="y", alpha=0.3)
            return fig, ax

        def png(fig: Any) -> bytes:
            buffer = io.BytesIO()
            fig.tight_layout()
            fig.savefig(buffer, format="png")
            return buffer.getvalue()

        fig, ax = figure(report.label("per_day"))
        days = [d[-2:] for d, _ in report.per_day]
        ax.bar(days, [n for _, n in report.per_day], color="#c0392b")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(report.label("day"), fontproperties=prop)
        ax.tick_params(axis="x", labelsize=7)
        out["per_day"] = png(fig)

        target = report.on_scene_target_s
        fig, ax = figure(report.label("distribution").format(target=f"{target:g}"))
        starts = [s for s, _ in report.on_scene_histogram]
        colours = ["#27ae60" if s + 30 <= target else "#e67e22" for s in starts]
        ax.bar([s + 15 for s in starts], [n for _, n in report.on_scene_histogram], width=28, color=colours)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axvline(target, color="#c0392b", linestyle="--", label=f"{report.label('target')} {target:g}")
        ax.set_xlabel(report.label("seconds"), fontproperties=prop)
        ax.legend(prop=prop)
        out["distribution"] = png(fig)

        fig, ax = figure(report.label("false_by_building"))
        rows = list(report.false_alarms.by_building[:15])[::-1]
        ax.barh([report.building_name(r.key) for r in rows], [r.count for r in rows], color="#e67e22")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        for label in ax.get_yticklabels():
            label.set_fontproperties(prop)
        fig.set_size_inches(8, max(2.5, 0.3 * len(rows) + 1))
        out["false_by_building"] = png(fig)

        fig, ax = figure(report.label("availability_by_grid"))
        groups = list(report.devices_by_grid)
        ax.bar([g.key for g in groups], [100 * (g.figures.availability or 0) for g in groups], color="#2980b9")
        ax.set_ylim(min([95.0] + [100 * (g.figures.availability or 0) - 1 for g in groups]), 100.5)
        ax.set_ylabel("%")
        out["availability_by_grid"] = png(fig)
    return out


# --- tables ------------------------------------------------------------------------------------------------------


def tables(report: MonthlyReport, *, building_rows: int | None = None) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table behind the charts, in the report's order."""
    lab = report.label
    out: list[tuple[str, list[str], list[list[str]]]] = [
        (lab("summary"), [lab("figure"), lab("value")], [[lab(k), show(v, k)] for k, v in report.summary_rows()]),
        (lab("per_day"), [lab("day"), lab("count")], [[d, str(n)] for d, n in report.per_day]),
        (
            report.label("distribution").format(target=f"{report.on_scene_target_s:g}"),
            [lab("seconds"), lab("count")],
            [
                [f"{s}–{s + 30}" if i < len(report.on_scene_histogram) - 1 else f"≥{s}", str(n)]
                for i, (s, n) in enumerate(report.on_scene_histogram)
            ],
        ),
        (
            lab("false_by_building"),
            [lab("building"), lab("grid"), lab("false_alarms"), lab("devices"), lab("rate")],
            [
                [
                    report.building_name(r.key),
                    r.grid or "",
                    str(r.count),
                    str(r.devices),
                    show(r.rate_per_100_per_month),
                ]
                for r in report.false_alarms.by_building[:building_rows]
            ],
        ),
        (
            lab("top_detectors"),
            [lab("device"), lab("building"), lab("rule"), lab("false_alarms")],
            [
                [r.key, report.building_name(r.building or ""), r.rule or "", str(r.count)]
                for r in report.false_alarms.top_detectors
            ],
        ),
        (
            lab("by_cause"),
            [lab("cause"), lab("count")],
            [[report.cause(c), str(n)] for c, n in report.false_alarms.by_cause.items()],
        ),
        (
            lab("availability_by_grid"),
            [lab("grid"), lab("devices"), lab("availability"), lab("extinguishers_ok")],
            [
                [
                    g.key,
                    str(g.figures.devices),
                    show(g.figures.availability, "availability"),
                    show(g.figures.extinguishers_in_service_ratio, "extinguishers_ok"),
                ]
                for g in report.devices_by_grid
            ],
        ),
    ]
    return out


def incident_header(report: MonthlyReport) -> list[str]:
    lab = report.label
    return [lab(k) for k in ("id", "raised", "building", "grid", "severity", "station", "ack_s", "on_scene_s")] + [
        lab("resolve_s"),
        lab("cause"),
    ]


def incident_rows(report: MonthlyReport, limit: int | None = None) -> Iterable[list[object]]:
    for line in report.incidents[:limit]:
        yield [
            line.id,
            report.local_time(line.raised_ms),
            line.building_name,
            line.grid or "",
            report.label(line.severity) if line.severity in ("fire", "supervisory", "trouble", "warning") else "",
            line.station or "",
            line.ack_s,
            line.on_scene_s,
            line.resolve_s,
            report.cause(line.cause) if line.cause else "",
        ]


# --- HTML --------------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif;margin:2em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;font-size:.9em}
th{background:#f3f3f3}td.n{text-align:right}img{max-width:100%}.note{color:#666;font-size:.85em}
"""


def _html_table(header: list[str], rows: Iterable[Iterable[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(show(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(report: MonthlyReport) -> bytes:
    import base64

    images = charts(report)
    chart_of = {1: "per_day", 2: "distribution", 3: "false_by_building", 6: "availability_by_grid"}
    parts = [
        f'<!doctype html><html lang="{"zh-CN" if report.lang == "zh" else "en"}"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title())}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(report.title())}</h1>",
        f'<p class="note">{html.escape(report.label("generated"))}: {report.local_time(report.generated_ms)}</p>',
    ]
    for n, (title, header, rows) in enumerate(tables(report)):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if n in chart_of:
            data = base64.b64encode(images[chart_of[n]]).decode()
            parts.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{data}">')
        parts.append(_html_table(header, rows))
    parts.append(f"<h2>{html.escape(report.label('incident_list'))}</h2>")
    parts.append(_html_table(incident_header(report), incident_rows(report, HTML_INCIDENT_ROWS)))
    if len(report.incidents) > HTML_INCIDENT_ROWS:
        parts.append(f'<p class="note">{HTML_INCIDENT_ROWS} / {len(report.incidents)} (XLSX, CSV: all)</p>')
    parts.append("</body></html>")
    return "".join(parts).encode()


# --- CSV ---------------------------------------------------------------------------------------------------------


def render_csv(report: MonthlyReport) -> bytes:
    """One file, its sections one after another (title line, header, rows, blank line), UTF-8 with a BOM so that
    a spreadsheet shows the Chinese; the summary carries the raw figures (shares as fractions)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([report.title()])
    writer.writerow([report.label("figure"), report.label("value"), "key"])
    for key, value in report.summary_rows():
        writer.writerow([report.label(key), "" if value is None else value, key])
    for title, header, rows in tables(report)[1:]:
        writer.writerow([])
        writer.writerow([title])
        writer.writerow(header)
        writer.writerows(rows)
    writer.writerow([])
    writer.writerow([report.label("incident_list")])
    writer.writerow(incident_header(report))
    writer.writerows([["" if c is None else c for c in row] for row in incident_rows(report)])
    return ("\ufeff" + buffer.getvalue()).encode()


# --- XLSX --------------------------------------------------------------------------------------------------------


def render_xlsx(report: MonthlyReport) -> bytes:
    """Sheets: the summary (label, raw value, key), each table behind a chart, and every incident of the month."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    summary = book.create_sheet(report.label("summary")[:31])
    summary.append([report.title()])
    summary.append([report.label("figure"), report.label("value"), "key"])
    for key, value in report.summary_rows():
        summary.append([report.label(key), value, key])
    for title, header, rows in tables(report)[1:]:
        sheet = book.create_sheet(_sheet_name(title))
        sheet.append(header)
        for row in rows:
            sheet.append([_number(c) for c in row])
    incidents = book.create_sheet(_sheet_name(report.label("incident_list")))
    incidents.append(incident_header(report))
    for line in incident_rows(report):
        incidents.append(line)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def _sheet_name(title: str) -> str:
    for bad in "[]:*?/\\":
        title = title.replace(bad, " ")
    return title[:31]


def _number(cell: str) -> object:
    try:
        return int(cell)
    except ValueError:
        return cell


# --- PDF ---------------------------------------------------------------------------------------------------------


def render_pdf(report: MonthlyReport) -> bytes:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import ParagraphStyle
    from reportlab.lib.units import mm
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.platypus import (
        Image,
        KeepTogether,
        PageBreak,
        Paragraph,
        SimpleDocTemplate,
        Spacer,
        Table,
        TableStyle,
    )

    font_name = "FiregridCJK"
    with _chart_lock:
        if font_name not in pdfmetrics.getRegisteredFontNames():
            pdfmetrics.registerFont(TTFont(font_name, str(cjk_font()), subfontIndex=0))
    images = charts(report)
    title_style = ParagraphStyle("title", fontName=font_name, fontSize=18, leading=24, spaceAfter=6)
    h2 = ParagraphStyle("h2", fontName=font_name, fontSize=13, leading=18, spaceBefore=10, spaceAfter=4)
    body = ParagraphStyle("body", fontName=font_name, fontSize=9, leading=12)
    width = A4[0] - 30 * mm

    def table(header: list[str], rows: list[list[str]], widths: list[float] | None = None) -> Any:
        t = Table([header, *rows], colWidths=widths, repeatRows=1)
        t.setStyle(
            TableStyle(
                [
                    ("FONTNAME", (0, 0), (-1, -1), font_name),
                    ("FONTSIZE", (0, 0), (-1, -1), 8),
                    ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#eeeeee")),
                    ("GRID", (0, 0), (-1, -1), 0.3, colors.grey),
                ]
            )
        )
        return t

    def image(name: str) -> Any:
        img = Image(io.BytesIO(images[name]))
        scale = width / img.drawWidth
        img.drawWidth, img.drawHeight = width, img.drawHeight * scale
        return img

    story: list[Any] = [
        Paragraph(html.escape(report.title()), title_style),
        Paragraph(f"{html.escape(report.label('generated'))}: {report.local_time(report.generated_ms)}", body),
        Spacer(1, 6),
    ]
    all_tables = tables(report, building_rows=PDF_BUILDING_ROWS)
    summary_title, summary_header, summary_rows = all_tables[0]
    story += [
        Paragraph(html.escape(summary_title), h2),
        table(summary_header, summary_rows, [width * 0.6, width * 0.3]),
    ]
    story.append(PageBreak())
    chart_of = {1: "per_day", 2: "distribution", 3: "false_by_building", 6: "availability_by_grid"}
    for n, (title, header, rows) in enumerate(all_tables[1:], start=1):
        heading = Paragraph(html.escape(title), h2)
        # A title stays on the page of its chart.
        story.append(KeepTogether([heading, image(chart_of[n])]) if n in chart_of else heading)
        if rows:
            story.append(table(header, rows))
        else:
            story.append(Paragraph(html.escape(report.label("none")), body))
    story += [PageBreak(), Paragraph(html.escape(report.label("incident_list")), h2)]
    lines = [[show(c) for c in row] for row in incident_rows(report, PDF_INCIDENT_ROWS)]
    story.append(table(incident_header(report), lines) if lines else Paragraph(report.label("none"), body))
    if len(report.incidents) > PDF_INCIDENT_ROWS:
        story.append(Paragraph(f"{PDF_INCIDENT_ROWS} / {len(report.incidents)} (XLSX, CSV: all)", body))
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=15 * mm,
        bottomMargin=15 * mm,
        title=report.title(),
        author="firegrid",
    )
    doc.build(story)
    return buffer.getvalue()
