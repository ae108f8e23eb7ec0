"""Aliyun (Alibaba Cloud) SMS ``SendSms`` (API version 2017-05-25) signed with V3 ``ACS3-HMAC-SHA256``.

Signing, as documented ("V3版本请求体&签名机制"): the RPC parameters travel in the query string; the request is
canonicalised as ``METHOD\\n/\\nCanonicalQueryString\\nCanonicalHeaders\\nSignedHeaders\\nhex(sha256(body))`` where the
query string is the RFC 3986-encoded parameters sorted by name, and the canonical headers are ``host`` and every
``x-acs-*`` header, lower-cased, sorted, ``name:value\\n`` each; the string to sign is
``ACS3-HMAC-SHA256\\nhex(sha256(CanonicalRequest))`` and the signature ``hex(HMAC-SHA256(AccessKeySecret, ...))``,
sent as ``Authorization: ACS3-HMAC-SHA256 Credential=<AccessKeyId>,SignedHeaders=<...>,Signature=<...>``.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote, urlsplit

import aiohttp
import orjson
from pydantic import SecretStr

from alerts.config import SmsConfig
from alerts.sms import ProviderEndpoint, SmsMessage, request
from alerts.webhook import SendResult

ENDPOINT = "https://dysmsapi.aliyuncs.com/"
ALGORITHM = "ACS3-HMAC-SHA256"
# Provider codes that mean "not now" (worth retrying later) rather than "never".
RETRYABLE = {"isp.SYSTEM_ERROR", "isp.RAM_PERMISSION_DENY", "Throttling", "ServiceUnavailable"}


def _enc(value: str) -> str:
    return quote(value, safe="-_.~")


def phone_number(phone: str) -> str:
    # Mainland numbers as 11 digits; others with their country code and no '+'.
    return phone[3:] if phone.startswith("+86") else phone.lstrip("+")


def signed_headers(
    *,
    method: str,
    url: str,
    query: dict[str, str],
    body: bytes,
    key_id: str,
    key_secret: str,
    action: str,
    version: str,
    now: datetime,
    nonce: str,
) -> dict[str, str]:
    host = urlsplit(url).netloc
    path = urlsplit(url).path or "/"
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": version,
        "x-acs-date": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "x-acs-signature-nonce": nonce,
        "x-acs-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    canonical_query = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(query.items()))
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join([method, path, canonical_query, canonical_headers, signed, headers["x-acs-content-sha256"]])
    to_sign = f"{ALGORITHM}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    signature = hmac.new(key_secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = f"{ALGORITHM} Credential={key_id},SignedHeaders={signed},Signature={signature}"
    return headers


def parse_answer(
    status: int,
    body: bytes,
    *,
    id_field: str,
    retryable: frozenset[str] | set[str],
    label: str,
    retry_after_s: Mapping[str, float] | None = None,
) -> SendResult:
    """An RPC answer: ``Code`` ``OK`` with the provider's id in ``id_field``, or the error, retryable when its code
    is in ``retryable`` (after ``retry_after_s[code]`` seconds where the provider sets a pace)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return SendResult(ok=False, status=status, error=f"HTTP {status}: not JSON")
    code = str(data.get("Code", ""))
    if status == 200 and code == "OK":
        return SendResult(ok=True, status=status, provider_id=data.get(id_field))
    return SendResult(
        ok=False,
        status=status,
        retryable=code in retryable,
        retry_after_s=(retry_after_s or {}).get(code),
        error=f"{label} {code}: {data.get('Message')}",
    )


def _parse(status: int, body: bytes) -> SendResult:
    return parse_answer(status, body, id_field="BizId", retryable=RETRYABLE, label="aliyun")


class AliyunAccount(ProviderEndpoint, Protocol):
    """What a call reads of an Aliyun provider's config (SMS or voice)."""

    @property
    def endpoint(self) -> str | None: ...

    @property
    def access_key_id(self) -> str | None: ...

    @property
    def access_key_secret(self) -> SecretStr | None: ...


async def rpc(
    session: aiohttp.ClientSession,
    config: AliyunAccount,
    *,
    endpoint: str,
    action: str,
    version: str,
    query: dict[str, str],
    parse: Callable[[int, bytes], SendResult],
) -> SendResult:
    """One RPC call (``action`` of API ``version``) with its parameters in the query string and an empty body,
    signed now with a fresh nonce, to ``config.endpoint`` or else the provider's ``endpoint``."""
    url = config.endpoint or endpoint
    headers = signed_headers(
        method="POST",
        url=url,
        query=query,
        body=b"",
        key_id=config.access_key_id or "",
        key_secret=config.access_key_secret.get_secret_value() if config.access_key_secret else "",
        action=action,
        version=version,
        now=datetime.now(tz=UTC),
        nonce=uuid.uuid4().hex,
    )
    full = url + ("&" if "?" in url else "?") + "&".join(f"{_enc(k)}={_enc(v)}" for k, v in sorted(query.items()))
    return await request(session, config, "POST", full, parse=parse, data=b"", headers=headers)


async def send(session: aiohttp.ClientSession, config: SmsConfig, message: SmsMessage) -> SendResult:
    query = {
        "PhoneNumbers": phone_number(message.phone),
        "SignName": config.sign_name or "",
        "TemplateCode": message.template.template_id or "",
        "TemplateParam": orjson.dumps(message.params).decode(),
        "OutId": message.msg_id,
    }
    return await rpc(
        session, config, endpoint=ENDPOINT, action="SendSms", version="2017-05-25", query=query, parse=_parse
    )
