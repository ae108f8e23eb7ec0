"""SMS providers: one module per provider, each ``async send(session, config, message) -> SendResult``.

What counts as what (the notifier acts on it): the provider accepted the message -> ok; the request provably never
reached the provider (connection refused, DNS) or the provider said "try later" (5xx, 429, throttling codes) ->
retryable; the request may have reached the provider but no answer came (timeout, connection dropped mid-way) ->
``unknown``: never resent blindly (a resend could page the same person twice), recorded for reconciliation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from alerts.config import SmsConfig, SmsTemplate
from alerts.webhook import SendResult, check_destination


@dataclass(frozen=True, slots=True)
class SmsMessage:
    msg_id: str  # our outbox id: sent as OutId / SessionContext / Idempotency-Key where the provider allows
    phone: str  # E.164
    lang: str
    template: SmsTemplate
    params: dict[str, str]

    @property
    def text(self) -> str:
        return self.template.text.format_map(_Missing(self.params))


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class ProviderEndpoint(Protocol):
    """What ``request`` reads of a provider's config (an SMS or a voice provider)."""

    @property
    def allow_private(self) -> bool: ...

    @property
    def timeout_s(self) -> float: ...


async def request(
    session: aiohttp.ClientSession,
    config: ProviderEndpoint,
    method: str,
    url: str,
    *,
    parse: Callable[[int, bytes], SendResult],
    **kwargs: object,
) -> SendResult:
    """One provider request with the shared error classification."""
    refused = await check_destination(url, allow_private=config.allow_private)
    if refused:
        return SendResult(ok=False, error=f"destination refused: {refused}")
    try:
        async with session.request(
            method,
            url,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            **kwargs,  # type: ignore[arg-type]
        ) as response:
            body = await response.read()
            status = response.status
    except aiohttp.ClientConnectorError as exc:
        return SendResult(ok=False, retryable=True, error=f"cannot connect: {exc}")
    except TimeoutError:
        return SendResult(ok=False, unknown=True, error=f"timeout after {config.timeout_s:g} s (outcome unknown)")
    except aiohttp.ClientError as exc:
        return SendResult(ok=False, unknown=True, error=f"{type(exc).__name__}: {exc} (outcome unknown)")
    if status == 429 or status >= 500:
        return SendResult(ok=False, retryable=True, status=status, error=f"HTTP {status}: {body[:200]!r}")
    return parse(status, body)


Sender = Callable[[aiohttp.ClientSession, SmsConfig, SmsMessage], Awaitable[SendResult]]


def sender_for(provider: str) -> Sender:
    if provider == "aliyun":
        from alerts.sms import aliyun

        return aliyun.send
    if provider == "tencent":
        from alerts.sms import tencent

        return tencent.send
    if provider == "twilio":
        from alerts.sms import twilio

        return twilio.send
    from alerts.sms import http

    return http.send
