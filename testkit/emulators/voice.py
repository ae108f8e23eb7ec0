"""Voice-call provider emulators: Aliyun ``SingleCallByTts`` (Dyvmsapi 2017-05-25, V3 ``ACS3-HMAC-SHA256``) and
Tencent ``SendTtsVoice`` (vms 2020-09-02, ``TC3-HMAC-SHA256``), each verifying the request and its signature as the
provider documents it (with the SMS emulators' verifiers: the signing rules are the same), and producing the
provider's own result receipt for a call (answered, keys pressed).

Written from the providers' documentation, not from ``alerts.voice``."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from aiohttp import web

from testkit.emulators.aliyun import AliyunEmulator
from testkit.emulators.tencent import TencentEmulator


class AliyunVoice(AliyunEmulator):
    def __init__(self, *, access_key_id: str, access_key_secret: str, templates: set[str]) -> None:
        super().__init__(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            templates=templates,
            action="SingleCallByTts",
            version="2017-05-25",
        )
        self.calls: list[dict[str, Any]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        if isinstance(params, web.Response):
            return params
        if not re.fullmatch(r"1\d{10}", params.get("CalledNumber", "")):
            return self._fail("isv.MOBILE_NUMBER_ILLEGAL", params.get("CalledNumber", ""))
        if params.get("TtsCode") not in self.templates:
            return self._fail("isv.TTS_TEMPLATE_ILLEGAL", params.get("TtsCode", ""))
        if params.get("PlayTimes", "3") not in ("1", "2", "3"):
            return self._fail("isv.InvalidParameter", f"PlayTimes {params.get('PlayTimes')}")
        out_id = params.get("OutId", "")
        if len(out_id.encode()) > 15:
            return self._fail("isv.InvalidParameter", "OutId longer than 15 bytes")
        try:
            tts = json.loads(params.get("TtsParam", "{}"))
        except json.JSONDecodeError:
            return self._fail("isv.INVALID_JSON_PARAM", params.get("TtsParam", ""))
        response = await self.scripted()
        if response is not None:
            self.changed()
            return response
        call_id = f"{len(self.calls) + 116012354148}^1"
        self.calls.append(
            {
                "phone": params["CalledNumber"],
                "template": params["TtsCode"],
                "params": tts,
                "play_times": int(params.get("PlayTimes", "3")),
                "out_id": out_id,
                "call_id": call_id,
            }
        )
        self.changed()
        return web.json_response({"Code": "OK", "Message": "OK", "CallId": call_id, "RequestId": str(uuid.uuid4())})

    def receipt(self, call: dict[str, Any], *, dtmf: str = "", answered: bool = True) -> list[dict[str, Any]]:
        """The VoiceReport the provider pushes after ``call``."""
        return [
            {
                "call_id": call["call_id"],
                "out_id": call["out_id"],
                "callee": call["phone"],
                "status_code": "200000" if answered else "200005",
                "status_msg": "用户听完" if answered else "用户未接听",
                "dtmf": dtmf,
                "duration": "12" if answered else "0",
                "start_time": "2026-12-04 03:00:00",
                "end_time": "2026-12-04 03:00:12",
            }
        ]


class TencentVoice(TencentEmulator):
    def __init__(self, *, secret_id: str, secret_key: str, sdk_app_id: str, templates: set[str]) -> None:
        super().__init__(
            secret_id=secret_id,
            secret_key=secret_key,
            sdk_app_id=sdk_app_id,
            templates=templates,
            service="vms",
            action="SendTtsVoice",
            version="2020-09-02",
        )
        self.calls: list[dict[str, Any]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        data = await self._verified(request)
        if isinstance(data, web.Response):
            return data
        if data.get("VoiceSdkAppid") != self.sdk_app_id:
            return self._fail("InvalidParameterValue.SdkAppidNotExist", str(data.get("VoiceSdkAppid")))
        if data.get("TemplateId") not in self.templates:
            return self._fail("FailedOperation.TemplateIncorrectOrUnapproved", str(data.get("TemplateId")))
        if not re.fullmatch(r"\+\d{8,15}", str(data.get("CalledNumber", ""))):
            return self._fail("InvalidParameterValue.IncorrectPhoneNumber", str(data.get("CalledNumber")))
        params = data.get("TemplateParamSet") or []
        if not all(isinstance(p, str) for p in params) or len("".join(params)) > 350:
            return self._fail("InvalidParameterValue.TemplateParameterFormatError", str(params))
        if data.get("PlayTimes", 2) not in (1, 2, 3):
            return self._fail("InvalidParameterValue", f"PlayTimes {data.get('PlayTimes')}")
        response = await self.scripted()
        if response is not None:
            self.changed()
            return response
        call_id = uuid.uuid4().hex
        self.calls.append(
            {
                "phone": data["CalledNumber"],
                "template": data["TemplateId"],
                "params": params,
                "play_times": data.get("PlayTimes", 2),
                "session": data.get("SessionContext"),
                "call_id": call_id,
            }
        )
        self.changed()
        status = {"CallId": call_id, "SessionContext": data.get("SessionContext", "")}
        return web.json_response({"Response": {"SendStatus": status, "RequestId": str(uuid.uuid4())}})

    def receipt(self, call: dict[str, Any], *, keypress: str | None = None) -> dict[str, Any]:
        """The callback the provider sends after ``call``: a key press, or the call's status."""
        mobile = call["phone"].removeprefix("+86")
        if keypress is not None:
            return {"voicekey_callback": {"callid": call["call_id"], "keypress": keypress, "mobile": mobile}}
        return {
            "voiceprompt_callback": {"callid": call["call_id"], "result": "0", "mobile": mobile, "nationcode": "86"}
        }
