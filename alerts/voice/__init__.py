"""Voice calls, the escalation's last rung: one module per provider (:mod:`~alerts.voice.aliyun`,
:mod:`~alerts.voice.tencent`), each ``async send(session, config, call) -> SendResult``; the result receipts a
provider sends back are read by :mod:`alerts.voice.receipts`.

Like SMS, a call is at most once: a timeout or a dropped connection may have rung the phone, so it becomes
``unknown``, never a blind second call; a refusal the provider says is temporary (throttling, per-number flow
control) is retried.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from alerts.config import VoiceConfig, VoiceTemplate
from alerts.webhook import SendResult


@dataclass(frozen=True, slots=True)
class VoiceCall:
    msg_id: str
    out_id: str  # short id the provider hands back in its receipt (aliyun OutId: at most 15 bytes)
    phone: str  # E.164
    lang: str
    template: VoiceTemplate
    params: dict[str, str]
    play_times: int

    @property
    def ordered_params(self) -> list[str]:
        return [self.params.get(name, "") for name in self.template.params]


Sender = Callable[[aiohttp.ClientSession, VoiceConfig, VoiceCall], Awaitable[SendResult]]


def sender_for(provider: str) -> Sender:
    if provider == "aliyun":
        from alerts.voice import aliyun

        return aliyun.send
    from alerts.voice import tencent

    return tencent.send
