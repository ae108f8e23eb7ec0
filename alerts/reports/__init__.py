"""The monthly report: figures of a month assembled into one document (:mod:`alerts.reports.monthly`, pure) and
rendered as HTML, PDF, XLSX or CSV (:mod:`alerts.reports.render`, charts by matplotlib, PDF by reportlab,
spreadsheets by openpyxl; each imported only when a report is rendered)."""

from __future__ import annotations

from alerts.reports.monthly import FORMATS, MonthlyReport, build_monthly

__all__ = ["FORMATS", "MonthlyReport", "build_monthly"]
