"""``GET /l/{token}`` and ``POST /l/{token}``: the small mobile page an action link opens.

GET shows the incident and the actions the recipient may take and changes nothing (chat apps and link-preview bots
open every link); POST, from the page's own form, acts (:mod:`alerts.responders`).  The token is the credential
(:mod:`alerts.links`): no bearer token, so this is not part of the API's OpenAPI surface.  A tampered or malformed
link is refused with 403, an expired one with 410.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from aiohttp import web

from alerts.links import PATH, LinkClaims, LinkError, verify_token
from alerts.records import IncidentDetail
from alerts.responders import perform
from alerts.robots.render import elapsed_label, floor_label
from gateway.api.routes.state import STATE_KEY
from gateway.api.runtime import Runtime

TEXT: dict[str, dict[str, Any]] = {
    "zh": {
        "title": "消防告警处置",
        "ack": "确认收到",
        "en_route": "我正在赶往",
        "arrive": "已到场",
        "name": "您的姓名",
        "state": "状态",
        "elapsed": "已持续",
        "code": "事件码",
        "done": {"ack": "已确认，谢谢。", "en_route": "已记录：您正在赶往现场。", "arrive": "已记录：已到场。"},
        "states": {
            "open": "待确认",
            "acknowledged": "已确认",
            "dispatched": "已出动",
            "on_scene": "已到场",
            "resolved": "已处置完毕",
        },
        "severity": {"fire": "火警", "supervisory": "监管告警", "trouble": "故障", "warning": "预警"},
        "expired": "链接已过期",
        "invalid": "链接无效",
    },
    "en": {
        "title": "Fire alarm response",
        "ack": "Acknowledge",
        "en_route": "On my way",
        "arrive": "On scene",
        "name": "Your name",
        "state": "Status",
        "elapsed": "Elapsed",
        "code": "Incident code",
        "done": {
            "ack": "Acknowledged, thank you.",
            "en_route": "Noted: you are on your way.",
            "arrive": "Noted: on scene.",
        },
        "states": {
            "open": "awaiting acknowledgement",
            "acknowledged": "acknowledged",
            "dispatched": "dispatched",
            "on_scene": "on scene",
            "resolved": "resolved",
        },
        "severity": {"fire": "FIRE", "supervisory": "Supervisory", "trouble": "Trouble", "warning": "Warning"},
        "expired": "This link has expired",
        "invalid": "This link is not valid",
    },
}
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # the token must not leak to another site through the Referer header
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
}


def _lang(request: web.Request) -> str:
    wanted = request.query.get("lang") or request.headers.get("Accept-Language") or "zh"
    return "en" if wanted.lower().startswith("en") else "zh"


def _page(title: str, body: str, *, lang: str, status: int = 200) -> web.Response:
    doc = (
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:0;padding:16px;background:#fff8f5;color:#222}"
        "h1{font-size:20px;color:#c62828}dl{display:grid;grid-template-columns:auto 1fr;gap:4px 12px}"
        "dt{color:#666}input,button{font-size:18px;width:100%;padding:12px;margin:6px 0;box-sizing:border-box}"
        "button{border:0;border-radius:8px;background:#c62828;color:#fff}button.alt{background:#455a64}"
        "</style></head><body>"
        f"{body}</body></html>"
    )
    return web.Response(text=doc, content_type="text/html", charset="utf-8", status=status, headers=HEADERS)


def _summary(detail: IncidentDetail, *, lang: str, now_ms: int) -> str:
    t = TEXT[lang]
    incident = detail.incident
    floors = {a.floor for a in detail.alerts if a.floor is not None}
    where = " ".join(floor_label(f, lang) for f in sorted(floors)) or "-"
    severity = t["severity"].get(incident.severity.label, incident.severity.label)
    state = t["states"].get(incident.state, incident.state)
    return (
        f"<h1>{html.escape(str(severity))} · {html.escape(incident.building_name)} {html.escape(where)}</h1><dl>"
        f"<dt>{t['state']}</dt><dd>{html.escape(str(state))}</dd>"
        f"<dt>{t['elapsed']}</dt><dd>{elapsed_label(now_ms - incident.opened_ms, lang)}</dd>"
        f"<dt>{t['code']}</dt><dd>{html.escape(incident.ack_code)}</dd></dl>"
    )


def add_action_links(app: web.Application, runtime: Runtime) -> None:
    def claims_of(request: web.Request, now_ms: int) -> LinkClaims | web.Response:
        lang = _lang(request)
        store = runtime.store
        links = store.notify.links if store is not None else None
        if store is None or links is None:
            return _page(TEXT[lang]["invalid"], f"<h1>{TEXT[lang]['invalid']}</h1>", lang=lang, status=404)
        try:
            return verify_token(links.secret.get_secret_value(), request.match_info["token"], now_s=now_ms // 1000)
        except LinkError as exc:
            key = "expired" if exc.reason == "link expired" else "invalid"
            return _page(
                TEXT[lang][key], f"<h1>{TEXT[lang][key]}</h1>", lang=lang, status=410 if key == "expired" else 403
            )

    async def show(request: web.Request) -> web.Response:
        now_ms = request.app[STATE_KEY].clock_ms()
        claims = claims_of(request, now_ms)
        if isinstance(claims, web.Response):
            return claims
        lang = _lang(request)
        assert runtime.store is not None
        detail = await asyncio.to_thread(runtime.store.get_incident, claims.incident_id)
        if detail is None:
            return _page(TEXT[lang]["invalid"], f"<h1>{TEXT[lang]['invalid']}</h1>", lang=lang, status=404)
        t = TEXT[lang]
        body = _summary(detail, lang=lang, now_ms=now_ms)
        if detail.incident.state != "resolved":
            name = "" if claims.recipient.startswith("robot:") else claims.recipient
            buttons = "".join(
                f'<button name="action" value="{a}"{" class=alt" if a != "ack" else ""}>{t[a]}</button>'
                for a in ("ack", "en_route", "arrive")
            )
            body += (
                f'<form method="post" action="?lang={lang}"><input name="by" placeholder="{t["name"]}"'
                f' value="{html.escape(name)}" maxlength="64">{buttons}</form>'
            )
        return _page(str(t["title"]), body, lang=lang)

    async def act(request: web.Request) -> web.Response:
        now_ms = request.app[STATE_KEY].clock_ms()
        claims = claims_of(request, now_ms)
        if isinstance(claims, web.Response):
            return claims
        lang = _lang(request)
        assert runtime.store is not None
        form = await request.post()
        action = str(form.get("action", ""))
        by = str(form.get("by", "")) or None
        result = await asyncio.to_thread(perform, runtime.store, claims, action=action, by_name=by, now_ms=now_ms)
        t = TEXT[lang]
        message = t["done"].get(result.message, result.message) if result.status == 200 else result.message
        detail = await asyncio.to_thread(runtime.store.get_incident, claims.incident_id)
        summary = _summary(detail, lang=lang, now_ms=now_ms) if detail is not None else ""
        return _page(
            str(t["title"]), f"<p><b>{html.escape(str(message))}</b></p>{summary}", lang=lang, status=result.status
        )

    app.router.add_get(PATH + "{token}", show)
    app.router.add_post(PATH + "{token}", act)
