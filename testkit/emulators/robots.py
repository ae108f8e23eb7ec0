"""Group-robot emulators: WeCom group robot, DingTalk custom robot, Feishu custom bot.  Each checks the request
exactly as the platform documents it (URL and credential, body shape, signature, timestamp window) and enforces
the platform's rate limit with the platform's answer, so a test can show firegrid stays under it.

Written from the platforms' documentation, not from ``alerts.robots``: a signing bug there is not mirrored here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiohttp import web

from testkit.emulators.base import Emulator


class RobotEmulator(Emulator):
    """The shared part: a sliding-minute rate limit per robot and the list of accepted messages."""

    per_min = 20

    def __init__(self, *, key: str, secret: str | None = None) -> None:
        super().__init__()
        self.key = key
        self.secret = secret
        self.messages: list[dict[str, Any]] = []
        self.throttled = 0  # requests answered with the rate-limit code
        self._sent: deque[float] = deque()
        self.clock: Callable[[], float] = time.monotonic  # seconds; a test may share its fake clock

    def _over_limit(self) -> bool:
        now = self.clock()
        while self._sent and self._sent[0] <= now - 60:
            self._sent.popleft()
        if len(self._sent) >= self.per_min:
            self.throttled += 1
            return True
        self._sent.append(now)
        return False

    def _accept(self, message: dict[str, Any]) -> None:
        message["at_ns"] = time.monotonic_ns()
        self.messages.append(message)
        self.changed()

    def _note(self, reason: str) -> None:
        self.errors.append(reason)
        self.changed()

    def _refuse(self, reason: str, answer: dict[str, Any], status: int = 200) -> web.Response:
        self._note(reason)
        return web.json_response(answer, status=status)

    async def _deliver(
        self, message: Callable[[], dict[str, Any]], *, throttled: dict[str, Any], ok: dict[str, Any]
    ) -> web.Response:
        """The common tail of a valid request: a scripted answer if one is due, else the platform's rate limit
        (answered ``throttled``), else the message is accepted (answered ``ok``)."""
        scripted = await self.scripted()
        if scripted is not None:
            self.changed()
            return scripted
        if self._over_limit():
            self.changed()
            return web.json_response(throttled)
        self._accept(message())
        return web.json_response(ok)

    async def _json(self, request: web.Request) -> dict[str, Any] | None:
        if not request.content_type.startswith("application/json"):
            self._note(f"content-type {request.content_type}")
            return None
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._note("body is not JSON")
            return None
        return body if isinstance(body, dict) else None


class WeComRobot(RobotEmulator):
    """``POST /cgi-bin/webhook/send?key=KEY``; markdown content at most 4096 bytes; 20 a minute, then 45009."""

    def __init__(self, *, key: str) -> None:
        super().__init__(key=key)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.method != "POST" or request.path != "/cgi-bin/webhook/send":
            return self._refuse(f"{request.method} {request.path}", {"errcode": 404, "errmsg": "not found"}, 404)
        if request.query.get("key") != self.key:
            return self._refuse("invalid key", {"errcode": 93000, "errmsg": "invalid webhook url"})
        body = await self._json(request)
        if body is None:
            return web.json_response({"errcode": 40058, "errmsg": "invalid json"})
        if body.get("msgtype") != "markdown" or not isinstance(body.get("markdown"), dict):
            return self._refuse(
                f"msgtype {body.get('msgtype')!r}", {"errcode": 40008, "errmsg": "invalid message type"}
            )
        content = body["markdown"].get("content")
        if not isinstance(content, str) or not content:
            return self._refuse("empty content", {"errcode": 44004, "errmsg": "empty content"})
        if len(content.encode()) > 4096:
            return self._refuse(
                "content over 4096 bytes", {"errcode": 40058, "errmsg": "content exceed max length 4096"}
            )
        return await self._deliver(
            lambda: {"content": content},
            throttled={"errcode": 45009, "errmsg": "api freq out of limit"},
            ok={"errcode": 0, "errmsg": "ok"},
        )


class DingTalkRobot(RobotEmulator):
    """``POST /robot/send?access_token=T&timestamp=MS&sign=S``: sign = urlencode(base64(HMAC-SHA256(secret,
    timestamp + "\\n" + secret))), timestamp within an hour; markdown {title, text}; 20 a minute, then 130101."""

    def __init__(self, *, key: str, secret: str) -> None:
        super().__init__(key=key, secret=secret)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.method != "POST" or request.path != "/robot/send":
            return self._refuse(f"{request.method} {request.path}", {"errcode": 404, "errmsg": "not found"}, 404)
        if request.query.get("access_token") != self.key:
            return self._refuse("invalid access_token", {"errcode": 300001, "errmsg": "token is not exist"})
        assert self.secret is not None
        stamp = request.query.get("timestamp", "")
        # aiohttp has already percent-decoded the query: compare with the base64 value itself.
        sign = request.query.get("sign", "")
        if not stamp.isdigit() or abs(int(stamp) - time.time() * 1000) > 3_600_000:
            return self._refuse(f"timestamp {stamp!r}", {"errcode": 310000, "errmsg": "invalid timestamp"})
        digest = hmac.new(self.secret.encode(), f"{stamp}\n{self.secret}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(base64.b64encode(digest).decode(), sign):
            return self._refuse("sign not match", {"errcode": 310000, "errmsg": "sign not match"})
        body = await self._json(request)
        if body is None:
            return web.json_response({"errcode": 43004, "errmsg": "invalid json"})
        kind = body.get("msgtype")
        part = body.get(kind) if isinstance(kind, str) else None
        if kind not in ("markdown", "actionCard") or not isinstance(part, dict):
            return self._refuse(f"msgtype {kind!r}", {"errcode": 40035, "errmsg": "invalid msgtype"})
        if not part.get("title") or not part.get("text"):
            return self._refuse("markdown needs title and text", {"errcode": 40035, "errmsg": "missing title or text"})
        return await self._deliver(
            lambda: {"title": part["title"], "text": part["text"], "at": body.get("at")},
            throttled={"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"},
            ok={"errcode": 0, "errmsg": "ok"},
        )


class FeishuBot(RobotEmulator):
    """``POST /open-apis/bot/v2/hook/HOOK``: body {timestamp (seconds), sign = base64(HMAC-SHA256(key=timestamp +
    "\\n" + secret, msg="")), msg_type, ...}; 100 a minute, then 11232."""

    per_min = 100

    def __init__(self, *, key: str, secret: str) -> None:
        super().__init__(key=key, secret=secret)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if request.method != "POST" or request.path != f"/open-apis/bot/v2/hook/{self.key}":
            return self._refuse(
                f"{request.method} {request.path}",
                {"code": 19001, "msg": "param invalid: incoming webhook access token invalid"},
            )
        body = await self._json(request)
        if body is None:
            return web.json_response({"code": 9499, "msg": "Bad Request"}, status=400)
        assert self.secret is not None
        stamp = str(body.get("timestamp", ""))
        if not stamp.isdigit() or abs(int(stamp) - time.time()) > 3600:
            return self._refuse(
                f"timestamp {stamp!r}", {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}
            )
        key = f"{stamp}\n{self.secret}".encode()
        expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, str(body.get("sign", ""))):
            return self._refuse(
                "sign match fail", {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}
            )
        if body.get("msg_type") != "interactive" or not isinstance(body.get("card"), dict):
            return self._refuse(
                f"msg_type {body.get('msg_type')!r}", {"code": 19002, "msg": "params error, msg_type need"}
            )
        card = body["card"]
        return await self._deliver(
            lambda: {
                "title": card.get("header", {}).get("title", {}).get("content"),
                "text": "\n".join(e.get("content", "") for e in card.get("elements", []) if isinstance(e, dict)),
            },
            throttled={"code": 11232, "msg": "frequency limited"},
            ok={"code": 0, "msg": "success", "data": {}},
        )
