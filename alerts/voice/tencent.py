"""Tencent Cloud voice message ``SendTtsVoice`` (vms, API 2020-09-02), signed with ``TC3-HMAC-SHA256`` exactly as
the SMS API is, by the same call (:func:`alerts.sms.tencent.api3`, service ``vms``).

Body, as documented: ``TemplateId``, ``CalledNumber`` (E.164 with ``+``), ``VoiceSdkAppid``, ``TemplateParamSet``
(the template's parameters in order), ``PlayTimes`` (at most 3) and ``SessionContext`` (ours).  The answer is
``Response.SendStatus.CallId`` or ``Response.Error.Code``; ``RequestLimitExceeded``, ``InternalError`` and
``LimitExceeded.*`` are temporary.
"""

from __future__ import annotations

import aiohttp

from alerts.config import VoiceConfig
from alerts.sms.tencent import api3, parse_response
from alerts.voice import VoiceCall
from alerts.webhook import SendResult

ENDPOINT = "https://vms.tencentcloudapi.com/"
SERVICE = "vms"
VERSION = "2020-09-02"
RETRYABLE_PREFIXES = ("InternalError", "RequestLimitExceeded", "LimitExceeded", "ResourceUnavailable")


def _parse(status: int, body: bytes) -> SendResult:
    response = parse_response(status, body, label="tencent voice", retryable_prefixes=RETRYABLE_PREFIXES)
    if isinstance(response, SendResult):
        return response
    call_id = (response.get("SendStatus") or {}).get("CallId")
    if not call_id:
        return SendResult(ok=False, status=status, error="tencent voice: no SendStatus.CallId")
    return SendResult(ok=True, status=status, provider_id=str(call_id))


async def send(session: aiohttp.ClientSession, config: VoiceConfig, call: VoiceCall) -> SendResult:
    body = {
        "TemplateId": call.template.template_id,
        "CalledNumber": call.phone,
        "VoiceSdkAppid": config.sdk_app_id,
        "TemplateParamSet": call.ordered_params,
        "PlayTimes": call.play_times,
        "SessionContext": call.out_id,
    }
    return await api3(
        session,
        config,
        endpoint=ENDPOINT,
        action="SendTtsVoice",
        body=body,
        parse=_parse,
        service=SERVICE,
        version=VERSION,
    )
