"""Tencent Cloud SMS ``SendSms`` (2021-01-11) emulator verifying ``TC3-HMAC-SHA256`` (signature v3) as documented:
canonical request ``POST\\n/\\n\\n<canonical headers>\\n<signed headers>\\n<hex sha256 payload>``; credential scope
``<UTC date of X-TC-Timestamp>/sms/tc3_request``; key derived HMAC("TC3"+SecretKey, date) -> service ->
"tc3_request"."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from testkit.emulators.base import Emulator


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class Rejected(Exception):
    """A request the provider refuses, with its error code (answered as HTTP 200 and ``Response.Error``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def verify_tc3(
    *, request: web.Request, payload: bytes, secret_id: str, secret_key: str, service: str, action: str, version: str
) -> None:
    """Check one API 3.0 request (path, headers, clock, credential scope, signature) as the provider does, for
    ``service`` (``sms``, ``vms``); :class:`Rejected` with the provider's error code when it fails."""
    h = {k.lower(): v for k, v in request.headers.items()}
    if request.method != "POST" or request.path != "/":
        raise Rejected("InvalidAction", f"{request.method} {request.path}")
    for name in ("authorization", "x-tc-action", "x-tc-timestamp", "x-tc-version", "content-type", "host"):
        if name not in h:
            raise Rejected("MissingParameter", f"header {name}")
    if h["x-tc-action"] != action or h["x-tc-version"] != version:
        raise Rejected("InvalidAction", f"{h['x-tc-action']} {h['x-tc-version']}")
    if not h["x-tc-timestamp"].isdigit() or abs(time.time() - int(h["x-tc-timestamp"])) > 300:
        raise Rejected("AuthFailure.SignatureExpire", h["x-tc-timestamp"])
    m = re.fullmatch(
        r"TC3-HMAC-SHA256 Credential=([^/]+)/(\d{4}-\d{2}-\d{2})/" + re.escape(service) + r"/tc3_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        h["authorization"],
    )
    if not m:
        raise Rejected("AuthFailure.InvalidAuthorization", h["authorization"])
    credential, date, signed_headers, signature = m.groups()
    if credential != secret_id:
        raise Rejected("AuthFailure.SecretIdNotFound", credential)
    timestamp = int(h["x-tc-timestamp"])
    if date != datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d"):
        raise Rejected("AuthFailure.InvalidAuthorization", "credential date does not match X-TC-Timestamp")
    names = signed_headers.split(";")
    if not {"content-type", "host"} <= set(names):
        raise Rejected("AuthFailure.InvalidAuthorization", f"SignedHeaders {signed_headers}")
    canonical_headers = "".join(f"{n}:{h[n].strip().lower() if n == 'x-tc-action' else h[n].strip()}\n" for n in names)
    canonical = "\n".join(["POST", "/", "", canonical_headers, signed_headers, hashlib.sha256(payload).hexdigest()])
    scope = f"{date}/{service}/tc3_request"
    to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(("TC3" + secret_key).encode(), date), service), "tc3_request")
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise Rejected("AuthFailure.SignatureFailure", "The provided credentials could not be validated.")


class TencentEmulator(Emulator):
    """One API 3.0 action of one service: the request verified (:func:`verify_tc3`) and its JSON body handed on;
    failures answered as Tencent Cloud does."""

    def __init__(
        self,
        *,
        secret_id: str,
        secret_key: str,
        sdk_app_id: str,
        templates: set[str],
        service: str,
        action: str,
        version: str,
    ) -> None:
        super().__init__()
        self.secret_id = secret_id
        self.secret_key = secret_key
        self.sdk_app_id = sdk_app_id
        self.templates = templates
        self.service = service
        self.action = action
        self.version = version
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def _fail(self, code: str, message: str) -> web.Response:
        self.errors.append(f"{code}: {message}")
        self.changed()
        # Tencent answers errors with HTTP 200 and Response.Error.
        return web.json_response(
            {"Response": {"Error": {"Code": code, "Message": message}, "RequestId": str(uuid.uuid4())}}
        )

    async def _verified(self, request: web.Request) -> dict[str, Any] | web.Response:
        """The request's JSON body once verified, or the error answer."""
        self.requests += 1
        payload = await request.read()
        try:
            verify_tc3(
                request=request,
                payload=payload,
                secret_id=self.secret_id,
                secret_key=self.secret_key,
                service=self.service,
                action=self.action,
                version=self.version,
            )
        except Rejected as e:
            return self._fail(e.code, e.message)
        try:
            data: dict[str, Any] = json.loads(payload)
        except json.JSONDecodeError:
            return self._fail("InvalidParameter", "body is not JSON")
        return data

    async def _handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError


class TencentSms(TencentEmulator):
    def __init__(
        self, *, secret_id: str, secret_key: str, sdk_app_id: str, sign_name: str, templates: set[str]
    ) -> None:
        super().__init__(
            secret_id=secret_id,
            secret_key=secret_key,
            sdk_app_id=sdk_app_id,
            templates=templates,
            service="sms",
            action="SendSms",
            version="2021-01-11",
        )
        self.sign_name = sign_name
        self.messages: list[dict[str, Any]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        data = await self._verified(request)
        if isinstance(data, web.Response):
            return data
        if data.get("SmsSdkAppId") != self.sdk_app_id:
            return self._fail("InvalidParameterValue.SdkAppIdNotExist", str(data.get("SmsSdkAppId")))
        if data.get("SignName") != self.sign_name:
            return self._fail("FailedOperation.SignatureIncorrectOrUnapproved", str(data.get("SignName")))
        if data.get("TemplateId") not in self.templates:
            return self._fail("FailedOperation.TemplateIncorrectOrUnapproved", str(data.get("TemplateId")))
        phones = data.get("PhoneNumberSet") or []
        if not phones or not all(re.fullmatch(r"\+\d{8,15}", p) for p in phones):
            return self._fail("InvalidParameterValue.IncorrectPhoneNumber", str(phones))
        params = data.get("TemplateParamSet") or []
        if not all(isinstance(p, str) for p in params):
            return self._fail("InvalidParameterValue.TemplateParameterFormatError", str(params))
        response = await self.scripted()
        if response is not None:
            self.changed()
            return response
        statuses = []
        for phone in phones:
            self.messages.append(
                {
                    "phone": phone,
                    "template": data["TemplateId"],
                    "params": params,
                    "session": data.get("SessionContext"),
                }
            )
            statuses.append(
                {
                    "SerialNo": str(uuid.uuid4()),
                    "PhoneNumber": phone,
                    "Fee": 1,
                    "SessionContext": data.get("SessionContext", ""),
                    "Code": "Ok",
                    "Message": "send success",
                    "IsoCode": "CN",
                }
            )
        self.changed()
        return web.json_response({"Response": {"SendStatusSet": statuses, "RequestId": str(uuid.uuid4())}})
