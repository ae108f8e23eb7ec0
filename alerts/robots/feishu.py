"""Feishu / Lark (飞书) custom bot: ``POST https://open.feishu.cn/open-apis/bot/v2/hook/<hook id>`` with an
interactive card.

Signed mode ("签名校验"), as documented: ``string_to_sign = timestamp + "\\n" + secret`` (timestamp in seconds,
within one hour); ``sign = base64(HMAC-SHA256(key=string_to_sign, msg=""))`` -- note the key is the string to sign
and the message is empty, unlike DingTalk; both travel in the JSON body as ``"timestamp"`` and ``"sign"``.
Answers carry ``code`` / ``msg``: 0 is success, 19021 a bad signature or an expired timestamp, 19022 an IP outside
the allow-list, 19024 a missing keyword; 9499 and 11232 mean too many requests (a bot takes 100 a minute, 5 a
second).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping
from urllib.parse import quote

import aiohttp

from alerts.config import RobotConfig
from alerts.robots import post_json
from alerts.robots.render import RobotMessage
from alerts.webhook import SendResult

ENDPOINT = "https://open.feishu.cn"
RETRY_AFTER_S = {9499: 1.0, 11232: 60.0}


def sign(secret: str, timestamp_s: int) -> str:
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def _parse(status: int, data: Mapping[str, object]) -> SendResult:
    code = data.get("code", data.get("StatusCode"))
    if code == 0:
        return SendResult(ok=True, status=status)
    error = f"feishu code {code}: {data.get('msg', data.get('StatusMessage'))}"
    if isinstance(code, int) and code in RETRY_AFTER_S:
        return SendResult(ok=False, retryable=True, status=status, retry_after_s=RETRY_AFTER_S[code], error=error)
    return SendResult(ok=False, status=status, error=error)


async def send(
    session: aiohttp.ClientSession, robot: RobotConfig, message: RobotMessage, *, now_s: int | None = None
) -> SendResult:
    base = (robot.endpoint or ENDPOINT).rstrip("/")
    url = f"{base}/open-apis/bot/v2/hook/{quote(robot.key.get_secret_value(), safe='')}"
    content = message.markdown
    if message.fire and robot.mention_all:
        content += "\n<at id=all></at>"
    payload: dict[str, object] = {
        "msg_type": "interactive",
        "card": {
            "header": {
                "title": {"tag": "plain_text", "content": message.title},
                "template": "red" if message.fire else "orange",
            },
            "elements": [{"tag": "markdown", "content": content}],
        },
    }
    if robot.secret is not None:
        stamp = now_s if now_s is not None else int(time.time())
        payload = {"timestamp": str(stamp), "sign": sign(robot.secret.get_secret_value(), stamp), **payload}
    return await post_json(session, robot, url, payload, parse=_parse)
