"""The demo's stand-ins for a WeCom group robot and a DingTalk custom robot, on the demo's local receiver: they check
each message as the platform would (the key in the URL; DingTalk's signature over timestamp and secret), print it to
the console with its action link, and show it on the dashboard's live stream as a ``robot`` event."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

WECOM_PATH = "/wecom"
DINGTALK_PATH = "/dingtalk"
_LINK = re.compile(r"\((https?://[^)\s]+/l/[^)\s]+)\)")


class DemoRobots:
    def __init__(self, *, out: Callable[[str], None], publish: Callable[[str, Any], object]) -> None:
        self.out = out
        self.publish = publish
        self.wecom_key = secrets.token_hex(16)
        self.dingtalk_token = secrets.token_hex(16)
        self.dingtalk_secret = "SEC" + secrets.token_hex(24)

    def robots(self, base_url: str) -> list[dict[str, Any]]:
        """``notify.robots`` entries pointing at this receiver (``base_url``: the receiver's http://host:port)."""
        common = {"allow_private": True, "timeout_s": 5.0}
        return [
            {"name": "demo-wecom", "platform": "wecom", "key": self.wecom_key, "endpoint": base_url + WECOM_PATH}
            | common,
            {
                "name": "demo-dingtalk",
                "platform": "dingtalk",
                "key": self.dingtalk_token,
                "secret": self.dingtalk_secret,
                "endpoint": base_url + DINGTALK_PATH,
            }
            | common,
        ]

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post(WECOM_PATH + "/cgi-bin/webhook/send", self._wecom)
        app.router.add_post(DINGTALK_PATH + "/robot/send", self._dingtalk)

    def _show(self, platform: str, title: str, text: str) -> None:
        link = _LINK.search(text)
        self.out(f"{platform}: {title}" + (f"  action link: {link.group(1)}" if link else ""))
        self.publish(
            "robot", {"platform": platform, "title": title, "text": text, "received_ms": int(time.time() * 1000)}
        )

    async def _wecom(self, request: web.Request) -> web.Response:
        if request.query.get("key") != self.wecom_key:
            return web.json_response({"errcode": 93000, "errmsg": "invalid webhook url"})
        body = orjson.loads(await request.read())
        content = str(body.get("markdown", {}).get("content", ""))
        title = content.splitlines()[0].lstrip("# ") if content else ""
        self._show("WeCom", title, content)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _dingtalk(self, request: web.Request) -> web.Response:
        if request.query.get("access_token") != self.dingtalk_token:
            return web.json_response({"errcode": 300001, "errmsg": "token is not exist"})
        stamp = request.query.get("timestamp", "")
        digest = hmac.new(self.dingtalk_secret.encode(), f"{stamp}\n{self.dingtalk_secret}".encode(), hashlib.sha256)
        expected = base64.b64encode(digest.digest()).decode()
        if not hmac.compare_digest(expected, request.query.get("sign", "")):
            self.out("DingTalk: REJECTED a message with a bad signature")
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        body = orjson.loads(await request.read())
        part = body.get("markdown", {})
        self._show("DingTalk", str(part.get("title", "")), str(part.get("text", "")))
        return web.json_response({"errcode": 0, "errmsg": "ok"})
