"""Tencent Cloud SMS ``SendSms`` (API 2021-01-11) signed with ``TC3-HMAC-SHA256`` (signature v3).

As documented: ``CanonicalRequest = "POST\\n/\\n\\n" + CanonicalHeaders + "\\n" + SignedHeaders + "\\n" +
hex(sha256(payload))`` with canonical headers ``content-type``, ``host`` and ``x-tc-action`` (value lower-cased),
``CredentialScope = <UTC date>/sms/tc3_request``, ``StringToSign = "TC3-HMAC-SHA256\\n" + timestamp + "\\n" + scope +
"\\n" + hex(sha256(CanonicalRequest))``; the key is derived ``HMAC("TC3"+SecretKey, date)`` -> ``HMAC(., "sms")`` ->
``HMAC(., "tc3_request")`` and the signature is ``hex(HMAC(key, StringToSign))``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import SecretStr

from alerts.config import SmsConfig
from alerts.sms import ProviderEndpoint, SmsMessage, request
from alerts.webhook import SendResult

ENDPOINT = "https://sms.tencentcloudapi.com/"
SERVICE = "sms"
VERSION = "2021-01-11"
CONTENT_TYPE = "application/json; charset=utf-8"
RETRYABLE_PREFIXES = (
    "InternalError",
    "RequestLimitExceeded",
    "LimitExceeded.AppGlobalDailyLimit",
    "ResourceUnavailable",
)


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def tc3_signature(*, secret_key: str, service: str, timestamp: int, canonical_request: str) -> str:
    """The TC3-HMAC-SHA256 signature of a canonical request (split out so that it can be checked against the
    worked example in Tencent Cloud's documentation)."""
    date = datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")
    scope = f"{date}/{service}/tc3_request"
    to_sign = f"TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{hashlib.sha256(canonical_request.encode()).hexdigest()}"
    key = _hmac(_hmac(_hmac(("TC3" + secret_key).encode(), date), service), "tc3_request")
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def signed_headers(
    *,
    url: str,
    payload: bytes,
    secret_id: str,
    secret_key: str,
    action: str,
    region: str,
    timestamp: int,
    service: str = SERVICE,
    version: str = VERSION,
) -> dict[str, str]:
    """The TC3 headers of one API 3.0 request (``service``/``version``: SMS by default; voice uses ``vms``)."""
    host = urlsplit(url).netloc
    date = datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d")
    canonical_headers = f"content-type:{CONTENT_TYPE}\nhost:{host}\nx-tc-action:{action.lower()}\n"
    signed = "content-type;host;x-tc-action"
    canonical = "\n".join(["POST", "/", "", canonical_headers, signed, hashlib.sha256(payload).hexdigest()])
    scope = f"{date}/{service}/tc3_request"
    signature = tc3_signature(secret_key=secret_key, service=service, timestamp=timestamp, canonical_request=canonical)
    return {
        "Authorization": f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders={signed}, "
        f"Signature={signature}",
        "Content-Type": CONTENT_TYPE,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Timestamp": str(timestamp),
        "X-TC-Version": version,
        "X-TC-Region": region,
    }


def parse_response(
    status: int, body: bytes, *, label: str, retryable_prefixes: tuple[str, ...]
) -> dict[str, Any] | SendResult:
    """An API 3.0 answer's ``Response`` object, or the failure it carries (``Response.Error``, retryable when its
    code starts with one of ``retryable_prefixes``)."""
    try:
        response = orjson.loads(body).get("Response", {})
    except (orjson.JSONDecodeError, AttributeError):
        return SendResult(ok=False, status=status, error=f"HTTP {status}: not JSON")
    error = response.get("Error")
    if error:
        code = str(error.get("Code", ""))
        return SendResult(
            ok=False,
            status=status,
            retryable=code.startswith(retryable_prefixes),
            error=f"{label} {code}: {error.get('Message')}",
        )
    return cast("dict[str, Any]", response)


def _parse(status: int, body: bytes) -> SendResult:
    response = parse_response(status, body, label="tencent", retryable_prefixes=RETRYABLE_PREFIXES)
    if isinstance(response, SendResult):
        return response
    statuses = response.get("SendStatusSet") or []
    if not statuses:
        return SendResult(ok=False, status=status, error="tencent: empty SendStatusSet")
    first = statuses[0]
    code = str(first.get("Code", ""))
    if code == "Ok":
        return SendResult(ok=True, status=status, provider_id=first.get("SerialNo"))
    return SendResult(
        ok=False,
        status=status,
        retryable=code.startswith(RETRYABLE_PREFIXES),
        error=f"tencent {code}: {first.get('Message')}",
    )


class TencentAccount(ProviderEndpoint, Protocol):
    """What a call reads of a Tencent Cloud provider's config (SMS or voice)."""

    @property
    def endpoint(self) -> str | None: ...

    @property
    def secret_id(self) -> str | None: ...

    @property
    def secret_key(self) -> SecretStr | None: ...

    @property
    def region(self) -> str: ...


async def api3(
    session: aiohttp.ClientSession,
    config: TencentAccount,
    *,
    endpoint: str,
    action: str,
    body: dict[str, Any],
    parse: Callable[[int, bytes], SendResult],
    service: str = SERVICE,
    version: str = VERSION,
) -> SendResult:
    """One API 3.0 call: ``body`` as JSON, signed now for ``service``, to ``config.endpoint`` or else the
    provider's ``endpoint``."""
    url = config.endpoint or endpoint
    payload = orjson.dumps(body)
    headers = signed_headers(
        url=url,
        payload=payload,
        secret_id=config.secret_id or "",
        secret_key=config.secret_key.get_secret_value() if config.secret_key else "",
        action=action,
        region=config.region,
        timestamp=int(datetime.now(tz=UTC).timestamp()),
        service=service,
        version=version,
    )
    return await request(session, config, "POST", url, parse=parse, data=payload, headers=headers)


async def send(session: aiohttp.ClientSession, config: SmsConfig, message: SmsMessage) -> SendResult:
    body = {
        "PhoneNumberSet": [message.phone],
        "SmsSdkAppId": config.sdk_app_id,
        "SignName": config.sign_name,
        "TemplateId": message.template.template_id,
        "TemplateParamSet": [message.params.get(name, "") for name in message.template.params],
        "SessionContext": message.msg_id,
    }
    return await api3(session, config, endpoint=ENDPOINT, action="SendSms", body=body, parse=_parse)
