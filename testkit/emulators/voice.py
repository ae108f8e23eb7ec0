"""Voice-call provider emulators: Aliyun ``SingleCallByTts`` (Dyvmsapi 2017-05-25, V3 ``ACS3-HMAC-SHA256``) and
Tencent ``SendTtsVoice`` (vms 2020-09-02, ``TC3-HMAC-SHA256``), each verifying the request and its signature as the
provider documents it (see the SMS emulators for the signing rules, which are the same), and producing the
provider's own result receipt for a call (answered, keys pressed).

Written from the providers' documentation, not from ``alerts.voice``."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web

from testkit.emulators.base import Emulator


def _pct(value: str) -> str:
    return quote(value, safe="-_.~")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class AliyunVoice(Emulator):
    def __init__(self, *, access_key_id: str, access_key_secret: str, templates: set[str]) -> None:
        super().__init__()
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.templates = templates
        self.calls: list[dict[str, Any]] = []
        self.nonces: set[str] = set()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def _fail(self, code: str, message: str, status: int = 400) -> web.Response:
        self.errors.append(f"{code}: {message}")
        self.changed()
        return web.json_response({"Code": code, "Message": message, "RequestId": str(uuid.uuid4())}, status=status)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        if request.method != "POST" or request.path != "/":
            return self._fail("InvalidAction", f"{request.method} {request.path}", 404)
        h = {k.lower(): v for k, v in request.headers.items()}
        needed = ("authorization", "x-acs-action", "x-acs-version", "x-acs-date", "x-acs-signature-nonce")
        for name in (*needed, "x-acs-content-sha256", "host"):
            if name not in h:
                return self._fail("MissingParameter", f"header {name}")
        if h["x-acs-action"] != "SingleCallByTts" or h["x-acs-version"] != "2017-05-25":
            return self._fail("InvalidAction.NotFound", f"{h['x-acs-action']} {h['x-acs-version']}")
        try:
            signed_at = datetime.strptime(h["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return self._fail("InvalidTimeStamp.Format", h["x-acs-date"])
        if abs((datetime.now(tz=UTC) - signed_at).total_seconds()) > 900:
            return self._fail("InvalidTimeStamp.Expired", h["x-acs-date"])
        if h["x-acs-signature-nonce"] in self.nonces:
            return self._fail("SignatureNonceUsed", h["x-acs-signature-nonce"])
        if hashlib.sha256(body).hexdigest() != h["x-acs-content-sha256"]:
            return self._fail("InvalidParameter", "x-acs-content-sha256 does not match the body")
        m = re.fullmatch(
            r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})", h["authorization"]
        )
        if not m:
            return self._fail("IncompleteSignature", h["authorization"])
        credential, signed_headers, signature = m.groups()
        if credential != self.access_key_id:
            return self._fail("InvalidAccessKeyId.NotFound", credential, 404)
        names = signed_headers.split(";")
        if names != sorted(names) or not ({"host"} | {n for n in h if n.startswith("x-acs-")}) <= set(names):
            return self._fail("IncompleteSignature", f"SignedHeaders {signed_headers}")
        query = parse_qsl(request.query_string, keep_blank_values=True)
        canonical_query = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(query))
        canonical_headers = "".join(f"{n}:{h[n].strip()}\n" for n in names)
        canonical = f"POST\n/\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{h['x-acs-content-sha256']}"
        to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
        expected = hmac.new(self.access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature):
            return self._fail("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
        self.nonces.add(h["x-acs-signature-nonce"])
        params = dict(query)
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


class TencentVoice(Emulator):
    def __init__(self, *, secret_id: str, secret_key: str, sdk_app_id: str, templates: set[str]) -> None:
        super().__init__()
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.sdk_app_id = sdk_app_id
        self.templates = templates
        self.calls: list[dict[str, Any]] = []
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def _fail(self, code: str, message: str) -> web.Response:
        self.errors.append(f"{code}: {message}")
        self.changed()
        return web.json_response(
            {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": str(uuid.uuid4())}}
        )

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        payload = await request.read()
        h = {k.lower(): v for k, v in request.headers.items()}
        if request.method != "POST" or request.path != "/":
            return self._fail("InvalidAction", f"{request.method} {request.path}")
        for name in ("authorization", "x-tc-action", "x-tc-timestamp", "x-tc-version", "content-type", "host"):
            if name not in h:
                return self._fail("MissingParameter", f"header {name}")
        if h["x-tc-action"] != "SendTtsVoice" or h["x-tc-version"] != "2020-09-02":
            return self._fail("InvalidAction", f"{h['x-tc-action']} {h['x-tc-version']}")
        if not h["x-tc-timestamp"].isdigit() or abs(time.time() - int(h["x-tc-timestamp"])) > 300:
            return self._fail("AuthFailure.SignatureExpire", h["x-tc-timestamp"])
        m = re.fullmatch(
            r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/vms/tc3_request, "
            r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
            h["authorization"],
        )
        if not m:
            return self._fail("AuthFailure.InvalidAuthorization", h["authorization"])
        secret_id, date, signed_headers, signature = m.groups()
        if secret_id != self.secret_id:
            return self._fail("AuthFailure.SecretIdNotFound", secret_id)
        timestamp = int(h["x-tc-timestamp"])
        if date != datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d"):
            return self._fail("AuthFailure.InvalidAuthorization", "credential date does not match X-TC-Timestamp")
        names = signed_headers.split(";")
        if not {"content-type", "host"} <= set(names):
            return self._fail("AuthFailure.InvalidAuthorization", f"SignedHeaders {signed_headers}")
        canonical_headers = "".join(
            f"{n}:{h[n].strip().lower() if n == 'x-tc-action' else h[n].strip()}\n" for n in names
        )
        canonical = "\n".join(["POST", "/", "", canonical_headers, signed_headers, hashlib.sha256(payload).hexdigest()])
        to_sign = (
            f"TC3-HMAC-SHA256\n{timestamp}\n{date}/vms/tc3_request\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        key = _hmac(_hmac(_hmac(("TC3" + self.secret_key).encode(), date), "vms"), "tc3_request")
        if not hmac.compare_digest(hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest(), signature):
            return self._fail("AuthFailure.SignatureFailure", "The provided credentials could not be validated.")
        try:
            data = json.loads(payload)
        except json.JSONDecodeError:
            return self._fail("InvalidParameter", "body is not JSON")
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
