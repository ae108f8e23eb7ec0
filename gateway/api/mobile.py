"""The mobile pages a point's QR code opens (``/m/p/<point>?t=<token>``): no app, no script, one small server-rendered
page that works over a weak connection, Chinese by default (``&lang=en`` for English).

* ``GET /m/p/<point>``: the checklist, the inspector's name, an optional photo, submit (``POST`` to the same URL);
  every failed item becomes a hazard;
* ``GET /m/p/<point>/hazard``: "report a hazard here" (``POST`` to the same URL).

The token in the link is the point's HMAC (``alerts.inspections.links``): it lets its holder see and submit for that
point and no other.  A submission the gateway cannot take (no name, a photo it refuses) comes back as the same form
with the person's answers kept and the reason on top, so nothing typed on a phone in a stairwell is lost.
"""

from __future__ import annotations

import asyncio
import html
import logging
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

from aiohttp import BodyPartReader, web

from alerts.inspections.config import InspectionPoint
from alerts.inspections.links import token_valid
from alerts.inspections.photos import PhotoRefused
from alerts.inspections.records import CheckResult
from gateway.api.framework import ApiError
from gateway.api.inspection_parts import InspectionParts, parts_of

log = logging.getLogger("firegrid.api.mobile")

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
MAX_FIELD = 4096
MAX_PARTS = 64

TEXT: dict[str, dict[str, str]] = {
    "zh": {
        "title": "消防安全巡查",
        "kind.extinguisher": "灭火器",
        "kind.hydrant": "消火栓",
        "kind.exit": "安全出口",
        "kind.shop": "沿街商铺",
        "kind.generic": "巡查点",
        "ok": "正常",
        "fail": "异常",
        "inspector": "巡查人姓名",
        "note": "备注（选填）",
        "photo": "现场照片（选填，JPEG/PNG）",
        "submit": "提交巡查",
        "report": "发现隐患？在此上报",
        "hazard.title": "上报火灾隐患",
        "hazard.category": "隐患类别",
        "hazard.description": "隐患描述",
        "hazard.reporter": "上报人姓名",
        "hazard.submit": "提交上报",
        "done": "已提交，谢谢！",
        "done.inspection": "巡查记录",
        "done.hazards": "已登记隐患",
        "done.none": "未发现隐患。",
        "done.hazard": "隐患已登记，将派人整改。",
        "back": "返回",
        "last": "上次巡查",
        "never": "尚未巡查",
        "interval": "巡查周期",
        "responsible": "责任人",
        "err.name": "请填写姓名。",
        "err.items": "请逐项选择“正常”或“异常”。",
        "err.description": "请填写隐患描述。",
        "err.form": "提交内容无法识别，请重试。",
        "err.token": "二维码无效：它不属于这个巡查点。",
        "err.closed": "巡查功能未开启。",
        "err.point": "没有这个巡查点。",
        "err.busy": "系统暂时不可用，请稍后再试。",
        "monthly": "每月",
        "quarterly": "每季度",
        "weekly": "每周",
        "daily": "每天",
        "yearly": "每年",
        "cat.blocked_exit": "疏散通道堵塞",
        "cat.extinguisher": "灭火器问题",
        "cat.electrical": "电气隐患",
        "cat.storage": "易燃物堆放",
        "cat.other": "其他",
    },
    "en": {
        "title": "Fire safety inspection",
        "kind.extinguisher": "Extinguisher",
        "kind.hydrant": "Hydrant",
        "kind.exit": "Exit",
        "kind.shop": "Shop",
        "kind.generic": "Inspection point",
        "ok": "OK",
        "fail": "Failed",
        "inspector": "Your name",
        "note": "Note (optional)",
        "photo": "Photo (optional, JPEG/PNG)",
        "submit": "Submit inspection",
        "report": "Found a hazard? Report it here",
        "hazard.title": "Report a fire hazard",
        "hazard.category": "Category",
        "hazard.description": "Description",
        "hazard.reporter": "Your name",
        "hazard.submit": "Report",
        "done": "Submitted, thank you!",
        "done.inspection": "Inspection",
        "done.hazards": "Hazards recorded",
        "done.none": "No hazard found.",
        "done.hazard": "The hazard is recorded; someone will be assigned to fix it.",
        "back": "Back",
        "last": "Last inspected",
        "never": "never",
        "interval": "Interval",
        "responsible": "Responsible",
        "err.name": "Please give your name.",
        "err.items": "Please mark every item OK or Failed.",
        "err.description": "Please describe the hazard.",
        "err.form": "The form could not be read; please try again.",
        "err.token": "This QR code is not valid for this inspection point.",
        "err.closed": "Inspections are not enabled.",
        "err.point": "No such inspection point.",
        "err.busy": "The system is busy; please try again shortly.",
        "monthly": "monthly",
        "quarterly": "quarterly",
        "weekly": "weekly",
        "daily": "daily",
        "yearly": "yearly",
        "cat.blocked_exit": "Blocked exit or escape route",
        "cat.extinguisher": "Extinguisher problem",
        "cat.electrical": "Electrical hazard",
        "cat.storage": "Combustible storage",
        "cat.other": "Other",
    },
}
CATEGORIES = ("blocked_exit", "extinguisher", "electrical", "storage", "other")

_STYLE = (
    "body{font:16px/1.5 sans-serif;margin:0;padding:12px;max-width:560px;color:#222}"
    "h1{font-size:20px;margin:4px 0}fieldset{border:1px solid #ccc;margin:8px 0;padding:8px}"
    "label{display:block;margin:6px 0}input[type=text],textarea,select{width:100%;box-sizing:border-box;"
    "font-size:16px;padding:6px}.item{padding:6px 0;border-bottom:1px solid #eee}.item span{display:inline-block;"
    "margin-right:16px}button{font-size:18px;padding:10px;width:100%;background:#c62828;color:#fff;border:0;"
    "margin-top:8px}.err{background:#fdecea;color:#b71c1c;padding:8px}.meta{color:#666;font-size:14px}"
    "a{color:#c62828}"
)


class FormError(Exception):
    pass


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    photo: bytes | None = None
    photo_name: str | None = None


def _lang(request: web.Request) -> str:
    return "en" if request.query.get("lang") == "en" else "zh"


def _page(lang: str, title: str, body: str, *, status: int = 200) -> web.Response:
    doc = (
        f'<!doctype html><html lang="{"zh-CN" if lang == "zh" else "en"}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return web.Response(
        text=doc,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
    )


def _error(lang: str, key: str, status: int) -> web.Response:
    t = TEXT[lang]
    return _page(lang, t["title"], f'<h1>{t["title"]}</h1><p class="err">{html.escape(t[key])}</p>', status=status)


def _authorise(request: web.Request) -> tuple[InspectionParts, InspectionPoint, str] | web.Response:
    lang = _lang(request)
    try:
        parts = parts_of(request.app)
    except ApiError:
        return _error(lang, "err.busy", 503)
    secret = parts.deadlines.config.inspections.secret_value()
    if secret is None:
        return _error(lang, "err.closed", 404)
    point_id = request.match_info.get("point", "")
    point = parts.point(point_id)
    token = request.query.get("t", "")
    if point is None:
        parts.refused("point")
        return _error(lang, "err.point", 404)
    if not token_valid(secret, point.id, token):
        parts.refused("token")
        log.info("QR token refused for point %s", point.id)
        return _error(lang, "err.token", 403)
    return parts, point, token


def _action(point: InspectionPoint, token: str, lang: str, suffix: str = "") -> str:
    url = f"/m/p/{quote(point.id)}{suffix}?t={quote(token)}"
    return url + ("&lang=en" if lang == "en" else "")


def _header(parts: InspectionParts, point: InspectionPoint, lang: str, last_ms: int | None = None) -> str:
    t = TEXT[lang]
    building = parts.deadlines.config.building(point.building)
    name = building.name if building is not None else point.building
    floor = "" if point.floor is None else (f" B{-point.floor}" if point.floor < 0 else f" {point.floor}F")
    meta = f"{t['interval']}: {t[point.interval]}"
    if point.responsible:
        meta += f" · {t['responsible']}: {point.responsible}"
    if last_ms is None:
        meta += f" · {t['last']}: {t['never']}"
    else:
        tz = ZoneInfo(parts.deadlines.config.notify.timezone)
        meta += f" · {t['last']}: {datetime.fromtimestamp(last_ms / 1000, tz=tz):%Y-%m-%d %H:%M}"
    return (
        f"<h1>{html.escape(t['kind.' + point.kind])} · {html.escape(point.id)}</h1>"
        f'<p class="meta">{html.escape(name + floor)} {html.escape(point.location)}<br>{html.escape(meta)}</p>'
    )


def _inspection_form(
    parts: InspectionParts,
    point: InspectionPoint,
    token: str,
    lang: str,
    *,
    form: Form | None = None,
    error: str = "",
    last_ms: int | None = None,
) -> str:
    t = TEXT[lang]
    values = form.fields if form else {}
    rows = []
    for i, item in enumerate(point.items):
        chosen = values.get(f"item-{i}")
        radios = "".join(
            f'<span><label><input type="radio" name="item-{i}" value="{v}" required'
            f"{' checked' if chosen == v else ''}> {html.escape(t[v])}</label></span>"
            for v in ("ok", "fail")
        )
        rows.append(f'<div class="item"><div>{i + 1}. {html.escape(item)}</div>{radios}</div>')
    err = f'<p class="err" role="alert">{html.escape(error)}</p>' if error else ""
    return (
        _header(parts, point, lang, last_ms)
        + err
        + f'<form method="post" enctype="multipart/form-data" action="{html.escape(_action(point, token, lang))}">'
        + f"<fieldset>{''.join(rows)}</fieldset>"
        + f'<label>{t["inspector"]}<input type="text" name="inspector" maxlength="60" required autocomplete="name"'
        + f' value="{html.escape(values.get("inspector", ""))}"></label>'
        + f'<label>{t["note"]}<textarea name="note" rows="2" maxlength="500">'
        + f"{html.escape(values.get('note', ''))}</textarea></label>"
        + f'<label>{t["photo"]}<input type="file" name="photo" accept="image/jpeg,image/png" capture="environment">'
        + f'</label><button type="submit">{t["submit"]}</button></form>'
        + f'<p><a href="{html.escape(_action(point, token, lang, "/hazard"))}">{t["report"]}</a></p>'
    )


def _hazard_form(point: InspectionPoint, token: str, lang: str, *, form: Form | None = None, error: str = "") -> str:
    t = TEXT[lang]
    values = form.fields if form else {}
    options = "".join(
        f'<option value="{c}"{" selected" if values.get("category") == c else ""}>{html.escape(t["cat." + c])}</option>'
        for c in CATEGORIES
    )
    err = f'<p class="err" role="alert">{html.escape(error)}</p>' if error else ""
    return (
        f'<h1>{t["hazard.title"]}</h1><p class="meta">{html.escape(point.id)} {html.escape(point.location)}</p>'
        + err
        + '<form method="post" enctype="multipart/form-data" '
        + f'action="{html.escape(_action(point, token, lang, "/hazard"))}">'
        + f'<label>{t["hazard.category"]}<select name="category">{options}</select></label>'
        + f'<label>{t["hazard.description"]}<textarea name="description" rows="3" maxlength="500" required>'
        + f"{html.escape(values.get('description', ''))}</textarea></label>"
        + f'<label>{t["hazard.reporter"]}<input type="text" name="reporter" maxlength="60" required'
        + f' value="{html.escape(values.get("reporter", ""))}"></label>'
        + f'<label>{t["photo"]}<input type="file" name="photo" accept="image/jpeg,image/png" capture="environment">'
        + f'</label><button type="submit">{t["hazard.submit"]}</button></form>'
        + f'<p><a href="{html.escape(_action(point, token, lang))}">{t["back"]}</a></p>'
    )


async def _read_form(request: web.Request, form: Form, *, photo_limit: int) -> None:
    """The multipart form under limits of its own (the API's JSON body limit is far below a photo's size): each text
    field at most 4 KB, at most 64 parts, the photo at most ``photo_limit`` bytes (read no further).  Fills ``form``
    as it goes, so a refusal half-way still has the answers read before it."""
    if request.content_type != "multipart/form-data":
        raise FormError("not multipart/form-data")
    reader = await request.multipart()
    count = 0
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise FormError("nested multipart")
        count += 1
        if count > MAX_PARTS:
            raise FormError("too many fields")
        name = part.name or ""
        if part.filename is not None:
            data = bytearray()
            while chunk := await part.read_chunk(65_536):
                data += chunk
                if len(data) > photo_limit:
                    raise PhotoRefused(f"the photo is larger than the limit of {photo_limit // 1024} KB")
            if name == "photo" and (data or part.filename):
                if data:
                    form.photo, form.photo_name = bytes(data), part.filename
            continue
        raw = bytearray()
        while chunk := await part.read_chunk(4096):
            raw += chunk
            if len(raw) > MAX_FIELD:
                raise FormError(f"field {name[:40]!r} is too long")
        form.fields[name[:40]] = raw.decode("utf-8", errors="replace").strip()


class _Again(Exception):
    """The submission cannot be taken: the form comes back with the answers kept and ``error`` on top."""

    def __init__(self, error: str, status: int = 422, *, reason: str = "form") -> None:
        super().__init__(error)
        self.error = error
        self.status = status
        self.reason = reason  # what the refusal is counted as


async def _take_form(
    request: web.Request, form: Form, *, parts: InspectionParts, point: InspectionPoint, t: dict[str, str], what: str
) -> None:
    """Read the submitted form into ``form``; :class:`_Again` when the photo is too large or the body malformed."""
    try:
        await _read_form(request, form, photo_limit=parts.deadlines.config.inspections.photo_max_kb * 1024)
    except PhotoRefused as exc:
        raise _Again(str(exc), 413, reason="photo") from None
    except Exception as exc:  # a malformed multipart body (aiohttp raises several kinds): refused, never a 500
        log.info("mobile %s for %s refused: %s", what, point.id, exc)
        raise _Again(t["err.form"], 400) from None


async def _form_photo(parts: InspectionParts, form: Form, point: InspectionPoint) -> str | None:
    """The id of the form's photo once stored (None without one); :class:`_Again` when it is refused."""
    if form.photo is None:
        return None
    try:
        return (await parts.save_photo(form.photo, filename=form.photo_name, building=point.building)).id
    except PhotoRefused as exc:
        raise _Again(str(exc), reason="photo") from None


async def inspection_page(request: web.Request) -> web.Response:
    found = _authorise(request)
    if isinstance(found, web.Response):
        return found
    parts, point, token = found
    lang = _lang(request)
    state = (await asyncio.to_thread(parts.store.point_states)).get(point.id)
    last = None if state is None else state.last_ms
    return _page(lang, TEXT[lang]["title"], _inspection_form(parts, point, token, lang, last_ms=last))


async def submit_inspection(request: web.Request) -> web.Response:
    found = _authorise(request)
    if isinstance(found, web.Response):
        return found
    parts, point, token = found
    lang = _lang(request)
    t = TEXT[lang]
    form = Form()
    try:
        await _take_form(request, form, parts=parts, point=point, t=t, what="form")
        inspector = form.fields.get("inspector", "")[:60]
        if not inspector:
            raise _Again(t["err.name"])
        results = []
        for i, item in enumerate(point.items):
            value = form.fields.get(f"item-{i}")
            if value not in ("ok", "fail"):
                raise _Again(t["err.items"])
            results.append(CheckResult(item=item, ok=value == "ok"))
        photo_id = await _form_photo(parts, form, point)
    except _Again as refused:
        parts.refused(refused.reason)
        page = _inspection_form(parts, point, token, lang, form=form, error=refused.error)
        return _page(lang, t["title"], page, status=refused.status)
    note = form.fields.get("note", "")[:500] or None
    inspection, hazards = await asyncio.to_thread(
        parts.store.record_inspection,
        point=point,
        grid=parts.grid_of(point.building),
        inspector=inspector,
        results=results,
        note=note,
        photo=photo_id,
        source="qr",
        now_ms=parts.clock_ms(),
    )
    await parts.after_change()
    listed = "".join(f"<li>#{h.id} {html.escape(h.description)}</li>" for h in hazards)
    body = (
        f"<h1>{t['done']}</h1><p>{t['done.inspection']} #{inspection.id} · {html.escape(point.id)}</p>"
        + (f'<p>{t["done.hazards"]}:</p><ul id="hazards">{listed}</ul>' if hazards else f"<p>{t['done.none']}</p>")
        + f'<p><a href="{html.escape(_action(point, token, lang))}">{t["back"]}</a></p>'
    )
    return _page(lang, t["done"], body, status=201)


async def hazard_page(request: web.Request) -> web.Response:
    found = _authorise(request)
    if isinstance(found, web.Response):
        return found
    _, point, token = found
    lang = _lang(request)
    return _page(lang, TEXT[lang]["hazard.title"], _hazard_form(point, token, lang))


async def submit_hazard(request: web.Request) -> web.Response:
    found = _authorise(request)
    if isinstance(found, web.Response):
        return found
    parts, point, token = found
    lang = _lang(request)
    t = TEXT[lang]
    form = Form()
    try:
        await _take_form(request, form, parts=parts, point=point, t=t, what="hazard form")
        description = form.fields.get("description", "")[:500]
        reporter = form.fields.get("reporter", "")[:60]
        category = form.fields.get("category", "other")
        if not description:
            raise _Again(t["err.description"])
        if not reporter:
            raise _Again(t["err.name"])
        photo_id = await _form_photo(parts, form, point)
    except _Again as refused:
        parts.refused(refused.reason)
        page = _hazard_form(point, token, lang, form=form, error=refused.error)
        return _page(lang, t["hazard.title"], page, status=refused.status)
    hazard = await asyncio.to_thread(
        parts.store.report_hazard,
        building=point.building,
        grid=parts.grid_of(point.building),
        floor=point.floor,
        point=point.id,
        location=point.location,
        category=category if category in CATEGORIES else "other",
        description=description,
        photo=photo_id,
        reporter=reporter,
        source="mobile",
        now_ms=parts.clock_ms(),
    )
    body = (
        f"<h1>{t['done']}</h1><p>{t['done.hazard']} #{hazard.id}</p>"
        f'<p><a href="{html.escape(_action(point, token, lang))}">{t["back"]}</a></p>'
    )
    return _page(lang, t["done"], body, status=201)


def add_mobile_routes(app: web.Application) -> None:
    app.router.add_get("/m/p/{point}", inspection_page)
    app.router.add_post("/m/p/{point}", submit_inspection)
    app.router.add_get("/m/p/{point}/hazard", hazard_page)
    app.router.add_post("/m/p/{point}/hazard", submit_hazard)
