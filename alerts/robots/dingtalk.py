"""DingTalk (钉钉) custom robot: ``POST https://oapi.dingtalk.com/robot/send?access_token=<token>`` with
``{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}, "at": {"isAtAll": ...}}``.

Signed mode ("加签"), as documented: ``string_to_sign = timestamp + "\\n" + secret`` (timestamp in milliseconds,
within one hour of DingTalk's clock); ``sign = urlencode(base64(HMAC-SHA256(key=secret, msg=string_to_sign)))``;
both go into the query string as ``&timestamp=...&sign=...``.  Each robot takes at most 20 messages a minute;
beyond that it answers errcode 130101 ("send too fast, exceed 20 times per minute") and holds the robot back for
ten minutes.  310000 covers a bad signature, an expired timestamp, a missing keyword or an IP outside the
allow-list: none of those heals by itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote, quote_plus

import aiohttp

from alerts.config import RobotConfig
from alerts.robots import post_json
from alerts.robots.render import RobotMessage
from alerts.webhook import SendResult

ENDPOINT = "https://oapi.dingtalk.com"
RETRY_AFTER_S = {-1: None, 130101: 60.0}


def sign(secret: str, timestamp_ms: int) -> str:
    """The documented signature, URL-encoded as it goes into the query string."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def _parse(status: int, data: Mapping[str, object]) -> SendResult:
    code = data.get("errcode")
    if code == 0:
        return SendResult(ok=True, status=status)
    error = f"dingtalk errcode {code}: {data.get('errmsg')}"
    if isinstance(code, int) and code in RETRY_AFTER_S:
        return SendResult(ok=False, retryable=True, status=status, retry_after_s=RETRY_AFTER_S[code], error=error)
    return SendResult(ok=False, status=status, error=error)


async def send(
    session: aiohttp.ClientSession, robot: RobotConfig, message: RobotMessage, *, now_ms: int | None = None
) -> SendResult:
    base = (robot.endpoint or ENDPOINT).rstrip("/")
    url = f"{base}/robot/send?access_token={quote(robot.key.get_secret_value(), safe='')}"
    if robot.secret is not None:
        stamp = now_ms if now_ms is not None else int(time.time() * 1000)
        url += f"&timestamp={stamp}&sign={sign(robot.secret.get_secret_value(), stamp)}"
    mention = message.fire and robot.mention_all
    text = message.markdown + ("\n\n@all" if mention else "")
    payload = {
        "msgtype": "markdown",
        "markdown": {"title": message.title, "text": text},
        "at": {"isAtAll": mention},
    }
    return await post_json(session, robot, url, payload, parse=_parse)
