"""Aliyun SMS ``SendSms`` (2017-05-25) emulator that verifies V3 ``ACS3-HMAC-SHA256`` signatures as documented in
"V3版本请求体&签名机制": canonical request = method, canonical URI, canonical query string (RFC 3986 encoded,
sorted), canonical headers (host, x-acs-*, content-type; lower-case, sorted, ``name:value\\n``), signed headers,
hex SHA-256 of the body; string to sign = ``ACS3-HMAC-SHA256\\n`` + hex SHA-256 of the canonical request;
signature = hex HMAC-SHA256 with the AccessKey secret."""

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


class Rejected(Exception):
    """A request the provider refuses: its error code, message and HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


def verify_acs3(
    *,
    request: web.Request,
    body: bytes,
    access_key_id: str,
    access_key_secret: str,
    action: str,
    version: str,
    nonces: set[str],
) -> dict[str, str]:
    """Check one V3-signed RPC request (path, headers, clock, nonce, body digest, signature) as the provider does;
    its query parameters, or :class:`Rejected` with the provider's error code.  Records the nonce once accepted."""
    if request.method != "POST" or request.path != "/":
        raise Rejected("InvalidAction", f"{request.method} {request.path}", 404)
    h = {k.lower(): v for k, v in request.headers.items()}
    for name in (
        "authorization",
        "x-acs-action",
        "x-acs-version",
        "x-acs-date",
        "x-acs-signature-nonce",
        "x-acs-content-sha256",
        "host",
    ):
        if name not in h:
            raise Rejected("MissingParameter", f"header {name}")
    if h["x-acs-action"] != action or h["x-acs-version"] != version:
        raise Rejected("InvalidAction.NotFound", f"{h['x-acs-action']} {h['x-acs-version']}")
    try:
        signed_at = datetime.strptime(h["x-acs-date"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise Rejected("InvalidTimeStamp.Format", h["x-acs-date"]) from None
    if abs((datetime.now(tz=UTC) - signed_at).total_seconds()) > 900:
        raise Rejected("InvalidTimeStamp.Expired", h["x-acs-date"])
    if h["x-acs-signature-nonce"] in nonces:
        raise Rejected("SignatureNonceUsed", h["x-acs-signature-nonce"])
    if hashlib.sha256(body).hexdigest() != h["x-acs-content-sha256"]:
        raise Rejected("InvalidParameter", "x-acs-content-sha256 does not match the body")
    m = re.fullmatch(
        r"ACS3-HMAC-SHA256 Credential=([^,]+),SignedHeaders=([^,]+),Signature=([0-9a-f]{64})", h["authorization"]
    )
    if not m:
        raise Rejected("IncompleteSignature", h["authorization"])
    credential, signed_headers, signature = m.groups()
    if credential != access_key_id:
        raise Rejected("InvalidAccessKeyId.NotFound", credential, 404)
    names = signed_headers.split(";")
    required = {"host"} | {n for n in h if n.startswith("x-acs-")}
    if names != sorted(names) or not required <= set(names):
        raise Rejected("IncompleteSignature", f"SignedHeaders {signed_headers}")
    # The raw query string, decoded then re-encoded per RFC 3986 and sorted by name.
    query = parse_qsl(request.query_string, keep_blank_values=True)
    canonical_query = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(query))
    canonical_headers = "".join(f"{n}:{h[n].strip()}\n" for n in names)
    canonical = f"POST\n/\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{h['x-acs-content-sha256']}"
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    expected = hmac.new(access_key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise Rejected("SignatureDoesNotMatch", "Specified signature is not matched with our calculation.")
    nonces.add(h["x-acs-signature-nonce"])
    return dict(query)


class AliyunEmulator(Emulator):
    """One RPC action of one Aliyun API: the request verified (:func:`verify_acs3`) and its query parameters handed
    on; failures answered as Aliyun does."""

    def __init__(
        self, *, access_key_id: str, access_key_secret: str, templates: set[str], action: str, version: str
    ) -> None:
        super().__init__()
        self.access_key_id = access_key_id
        self.access_key_secret = access_key_secret
        self.templates = templates
        self.action = action
        self.version = version
        self.nonces: set[str] = set()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    def _fail(self, code: str, message: str, status: int = 400) -> web.Response:
        self.errors.append(f"{code}: {message}")
        self.changed()
        return web.json_response({"Code": code, "Message": message, "RequestId": str(uuid.uuid4())}, status=status)

    async def _verified(self, request: web.Request) -> dict[str, str] | web.Response:
        """The request's parameters once verified, or the error answer."""
        self.requests += 1
        body = await request.read()
        try:
            return verify_acs3(
                request=request,
                body=body,
                access_key_id=self.access_key_id,
                access_key_secret=self.access_key_secret,
                action=self.action,
                version=self.version,
                nonces=self.nonces,
            )
        except Rejected as e:
            return self._fail(e.code, e.message, e.status)

    async def _handle(self, request: web.Request) -> web.Response:
        raise NotImplementedError


class AliyunSms(AliyunEmulator):
    def __init__(self, *, access_key_id: str, access_key_secret: str, sign_name: str, templates: set[str]) -> None:
        super().__init__(
            access_key_id=access_key_id,
            access_key_secret=access_key_secret,
            templates=templates,
            action="SendSms",
            version="2017-05-25",
        )
        self.sign_name = sign_name
        self.messages: list[dict[str, Any]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        params = await self._verified(request)
        if isinstance(params, web.Response):
            return params
        for name in ("PhoneNumbers", "SignName", "TemplateCode"):
            if not params.get(name):
                return self._fail("MissingParameter", name)
        if params["SignName"] != self.sign_name:
            return self._fail("isv.SMS_SIGNATURE_ILLEGAL", params["SignName"])
        if params["TemplateCode"] not in self.templates:
            return self._fail("isv.SMS_TEMPLATE_ILLEGAL", params["TemplateCode"])
        if not re.fullmatch(r"1\d{10}", params["PhoneNumbers"]):
            return self._fail("isv.MOBILE_NUMBER_ILLEGAL", params["PhoneNumbers"])
        try:
            template_params = json.loads(params.get("TemplateParam", "{}"))
        except json.JSONDecodeError:
            return self._fail("isv.INVALID_JSON_PARAM", params.get("TemplateParam", ""))
        response = await self.scripted()
        if response is not None:
            self.changed()
            return response
        self.messages.append(
            {
                "phone": params["PhoneNumbers"],
                "template": params["TemplateCode"],
                "params": template_params,
                "out_id": params.get("OutId"),
                "at_ns": time.monotonic_ns(),  # for latency benches
            }
        )
        self.changed()
        return web.json_response(
            {"Code": "OK", "Message": "OK", "BizId": f"{len(self.messages)}^0", "RequestId": str(uuid.uuid4())}
        )
