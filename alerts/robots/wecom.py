"""WeCom (企业微信) group robot: ``POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=<key>`` with
``{"msgtype": "markdown", "markdown": {"content": ...}}`` (content at most 4096 bytes, UTF-8).

The key in the URL is the robot's only credential (no signature).  Each robot takes at most 20 messages a minute;
beyond that it answers errcode 45009 ("api freq out of limit").  Answers are HTTP 200 with ``errcode`` / ``errmsg``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

import aiohttp

from alerts.config import RobotConfig
from alerts.robots import post_json
from alerts.robots.render import RobotMessage
from alerts.webhook import SendResult

ENDPOINT = "https://qyapi.weixin.qq.com"
MAX_BYTES = 4096
# Documented codes worth trying again later: -1 system busy, 45009 frequency limit (a one-minute window).
RETRY_AFTER_S = {-1: None, 45009: 60.0}


def clip(text: str, limit: int = MAX_BYTES) -> str:
    raw = text.encode()
    if len(raw) <= limit:
        return text
    return raw[: limit - 3].decode(errors="ignore") + "..."


def _parse(status: int, data: Mapping[str, object]) -> SendResult:
    code = data.get("errcode")
    if code == 0:
        return SendResult(ok=True, status=status)
    error = f"wecom errcode {code}: {data.get('errmsg')}"
    if isinstance(code, int) and code in RETRY_AFTER_S:
        return SendResult(ok=False, retryable=True, status=status, retry_after_s=RETRY_AFTER_S[code], error=error)
    return SendResult(ok=False, status=status, error=error)  # 93000 invalid key, 40008 bad type, ...


async def send(session: aiohttp.ClientSession, robot: RobotConfig, message: RobotMessage) -> SendResult:
    base = (robot.endpoint or ENDPOINT).rstrip("/")
    url = f"{base}/cgi-bin/webhook/send?key={quote(robot.key.get_secret_value(), safe='')}"
    content = message.markdown
    if message.fire and robot.mention_all:
        content += "\n<@all>" if message.lang == "en" else "\n<@all> 请立即处置"
    payload = {"msgtype": "markdown", "markdown": {"content": clip(content)}}
    return await post_json(session, robot, url, payload, parse=_parse)
