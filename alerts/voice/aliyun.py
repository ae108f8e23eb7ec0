"""Aliyun voice service ``SingleCallByTts`` (Dyvmsapi 2017-05-25), signed with V3 ``ACS3-HMAC-SHA256`` exactly as
the SMS API is, by the same call (:func:`alerts.sms.aliyun.rpc`).

Parameters, as documented: ``CalledNumber`` (the callee, 11 digits for a mainland mobile), ``TtsCode`` (an approved
TTS template), ``TtsParam`` (the template's variables as a JSON object), ``PlayTimes`` (1-3), ``OutId`` (ours, 1-15
bytes, handed back in the receipt) and ``CalledShowNumber`` (the caller id; left out: the public number pool).  The
answer carries ``Code`` (``OK``) and ``CallId``.  Per callee the provider allows 1 call a minute, 5 an hour and 20 a
day (``isv.BUSINESS_LIMIT_CONTROL``): retried later, the call was not placed.
"""

from __future__ import annotations

import aiohttp
import orjson

from alerts.config import VoiceConfig
from alerts.sms.aliyun import parse_answer, phone_number, rpc
from alerts.voice import VoiceCall
from alerts.webhook import SendResult

ENDPOINT = "https://dyvmsapi.aliyuncs.com/"
RETRYABLE = {"isp.SYSTEM_ERROR", "Throttling", "Throttling.User", "ServiceUnavailable", "isv.BUSINESS_LIMIT_CONTROL"}


def _parse(status: int, body: bytes) -> SendResult:
    return parse_answer(
        status,
        body,
        id_field="CallId",
        retryable=RETRYABLE,
        label="aliyun voice",
        retry_after_s={"isv.BUSINESS_LIMIT_CONTROL": 60.0},
    )


async def send(session: aiohttp.ClientSession, config: VoiceConfig, call: VoiceCall) -> SendResult:
    query = {
        "CalledNumber": phone_number(call.phone),
        "TtsCode": call.template.template_id,
        "TtsParam": orjson.dumps(call.params).decode(),
        "PlayTimes": str(call.play_times),
        "OutId": call.out_id,
    }
    if config.called_show_number:
        query["CalledShowNumber"] = config.called_show_number
    return await rpc(
        session, config, endpoint=ENDPOINT, action="SingleCallByTts", version="2017-05-25", query=query, parse=_parse
    )
