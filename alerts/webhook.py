"""Standard Webhooks (https://www.standardwebhooks.com/): sign and send one notification.

* ``webhook-id``: the outbox row's ``msg_id``, identical on every retry so the receiver can deduplicate;
* ``webhook-timestamp``: integer Unix seconds of *this* attempt;
* ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``, made by
  :func:`common.webhooks.sign`.

Outcome classes (Alertmanager style, the notifier decides what to do with them): 2xx delivered; connection errors,
timeouts, 5xx and 429 retryable (``Retry-After`` honoured); 410 disables the endpoint; any other 4xx and every 3xx
(redirects are never followed: a redirect could smuggle a signed alert elsewhere) permanent.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import aiohttp

from alerts.config import is_private_address, is_private_host
from common.webhooks import sign
from common.webhooks import verify as verify  # re-exported: inbound SMS replies are verified through this module


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one attempt achieved.  ``retryable`` says whether trying again may succeed; ``unknown`` that the
    request may have been processed (only meaningful for SMS, where a resend would be a duplicate)."""

    ok: bool
    retryable: bool = False
    status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    disable: bool = False
    unknown: bool = False
    provider_id: str | None = None


def parse_retry_after(value: str | None, *, now_s: float) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)


_resolved: dict[str, tuple[float, str | None]] = {}


async def check_destination(url: str, *, allow_private: bool) -> str | None:
    """Refuse loopback/private/link-local destinations (also when a public-looking name resolves to one), unless
    allowed.  Returns a reason, or None when the URL may be used."""
    if allow_private:
        return None
    host = urlsplit(url).hostname or ""
    if is_private_host(host):
        return f"{host} is a private, loopback or link-local address"
    try:
        ipaddress.ip_address(host)
        return None  # a public literal address
    except ValueError:
        pass
    cached = _resolved.get(host)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return None  # let the request fail (retryably) with the resolver's error
    verdict = None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if is_private_address(address):
            verdict = f"{host} resolves to private address {address}"
            break
    _resolved[host] = (now + 60.0, verdict)  # a short cache: one lookup per host per minute, not per send
    return verdict


async def send(
    session: aiohttp.ClientSession,
    *,
    url: str,
    secret: str,
    msg_id: str,
    body: bytes,
    timeout_s: float,
    allow_private: bool,
    now_s: float | None = None,
) -> SendResult:
    refused = await check_destination(url, allow_private=allow_private)
    if refused:
        return SendResult(ok=False, retryable=False, error=f"destination refused: {refused}")
    stamp = int(now_s if now_s is not None else datetime.now(tz=UTC).timestamp())
    headers = {
        "content-type": "application/json",
        "user-agent": "firegrid-webhooks/1",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }
    try:
        async with session.post(
            url, data=body, headers=headers, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as response:
            await response.read()
            status = response.status
            retry_after = parse_retry_after(response.headers.get("Retry-After"), now_s=float(stamp))
    except TimeoutError:
        return SendResult(ok=False, retryable=True, error=f"timeout after {timeout_s:g} s")
    except aiohttp.ClientError as exc:
        return SendResult(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}")
    return classify(status, retry_after)


def classify(status: int, retry_after: float | None) -> SendResult:
    if 200 <= status < 300:
        return SendResult(ok=True, status=status)
    if status == 410:
        return SendResult(ok=False, status=status, disable=True, error="410 Gone: endpoint disabled")
    if status == 429 or status >= 500:
        return SendResult(ok=False, retryable=True, status=status, retry_after_s=retry_after, error=f"HTTP {status}")
    if 300 <= status < 400:
        return SendResult(ok=False, status=status, error=f"HTTP {status}: redirects are not followed")
    return SendResult(ok=False, status=status, error=f"HTTP {status}")
