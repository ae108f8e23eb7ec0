"""Group robots: one module per platform (:mod:`~alerts.robots.wecom`, :mod:`~alerts.robots.dingtalk`,
:mod:`~alerts.robots.feishu`), each ``async send(session, robot, message) -> SendResult``; what a message says is
:mod:`alerts.robots.render`'s business, how fast a robot may be fed is :mod:`alerts.robots.limit`'s.

What counts as what (the notifier acts on it), the webhook rule: a robot message is delivered at least once, so a
timeout or a dropped connection is retryable (a group may see a message twice; it never misses a fire); the
platform's "too fast" answers are retryable after the platform's window; a wrong key or signature is not.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import aiohttp
import orjson

from alerts.config import RobotConfig
from alerts.robots.render import RobotMessage
from alerts.webhook import SendResult, check_destination

__all__ = ["RobotMessage", "Sender", "post_json", "sender_for"]

Sender = Callable[[aiohttp.ClientSession, RobotConfig, RobotMessage], Awaitable[SendResult]]


def _redact(text: str, robot: RobotConfig) -> str:
    # The key travels in the URL; an error message that quotes the URL must not carry it into a log.
    key = robot.key.get_secret_value()
    return text.replace(key, "***") if key else text


async def post_json(
    session: aiohttp.ClientSession,
    robot: RobotConfig,
    url: str,
    payload: Mapping[str, object],
    *,
    parse: Callable[[int, Mapping[str, object]], SendResult],
) -> SendResult:
    """POST ``payload`` as JSON to ``url`` with the shared error classification; ``parse`` reads the platform's
    answer (all three answer HTTP 200 with an error code in the body)."""
    refused = await check_destination(url, allow_private=robot.allow_private)
    if refused:
        return SendResult(ok=False, error=f"destination refused: {refused}")
    try:
        async with session.post(
            url,
            data=orjson.dumps(payload),
            headers={"content-type": "application/json; charset=utf-8"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=robot.timeout_s),
        ) as response:
            raw = await response.read()
            status = response.status
    except TimeoutError:
        return SendResult(ok=False, retryable=True, error=f"timeout after {robot.timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return SendResult(ok=False, retryable=True, error=_redact(f"{type(exc).__name__}: {exc}", robot))
    if status == 429 or status >= 500:
        return SendResult(ok=False, retryable=True, status=status, error=f"HTTP {status}")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return SendResult(ok=False, status=status, error=f"HTTP {status}: not JSON")
    if not isinstance(data, dict):
        return SendResult(ok=False, status=status, error=f"HTTP {status}: not a JSON object")
    result = parse(status, data)
    if result.error:
        return SendResult(
            ok=result.ok,
            retryable=result.retryable,
            status=result.status,
            retry_after_s=result.retry_after_s,
            error=_redact(result.error, robot),
        )
    return result


def sender_for(platform: str) -> Sender:
    if platform == "wecom":
        from alerts.robots import wecom

        return wecom.send
    if platform == "dingtalk":
        from alerts.robots import dingtalk

        return dingtalk.send
    from alerts.robots import feishu

    return feishu.send
