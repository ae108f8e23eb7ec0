"""Each SMS provider against its emulator, which verifies the request and its signature as the provider documents
it; wrong credentials are refused by the emulator (so the check is real); inbound SMS replies acknowledge."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest
from standardwebhooks import Webhook

from alerts.config import SmsConfig, SmsTemplate
from alerts.inbound import handle_inbound_sms
from alerts.sms import SmsMessage, sender_for
from alerts.store import AlertStore
from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.base import Emulator
from testkit.emulators.http_sms import HttpSms
from testkit.emulators.scenario import (
    ALIYUN,
    HTTP_SMS,
    INBOUND_SECRET,
    TENCENT,
    TWILIO,
    alarm,
    notify_config,
    sms_section,
)
from testkit.emulators.tencent import TencentSms
from testkit.emulators.twilio import TwilioSms

pytestmark = pytest.mark.timeout(30)
PARAMS = {"building": "阳光花园1号楼", "location": "3F yg01-sd-03a", "severity": "火警", "code": "4821", "count": "1"}


def emulator_for(provider: str) -> Emulator:
    if provider == "aliyun":
        return AliyunSms(
            access_key_id=ALIYUN["access_key_id"],
            access_key_secret=ALIYUN["access_key_secret"],
            sign_name=ALIYUN["sign_name"],
            templates={"SMS_100001", "SMS_100002"},
        )
    if provider == "tencent":
        return TencentSms(
            secret_id=TENCENT["secret_id"],
            secret_key=TENCENT["secret_key"],
            sdk_app_id=TENCENT["sdk_app_id"],
            sign_name=TENCENT["sign_name"],
            templates={"2000001", "2000002"},
        )
    if provider == "twilio":
        return TwilioSms(
            account_sid=TWILIO["account_sid"], auth_token=TWILIO["auth_token"], from_number=TWILIO["from_number"]
        )
    return HttpSms(token=HTTP_SMS["token"], hmac_secret=HTTP_SMS["hmac_secret"])


def message(config: SmsConfig, lang: str = "zh") -> SmsMessage:
    template: SmsTemplate = config.templates[lang]  # type: ignore[index]
    return SmsMessage(msg_id="sms_test1", phone="+8613800000001", lang=lang, template=template, params=PARAMS)


@pytest.mark.parametrize("provider", ["aliyun", "tencent", "twilio", "http"])
async def test_provider_request_verified_by_emulator(provider: str) -> None:
    async with emulator_for(provider) as emulator:
        config = SmsConfig.model_validate(sms_section(provider, emulator.url))
        async with aiohttp.ClientSession() as session:
            result = await sender_for(provider)(session, config, message(config))
        assert emulator.errors == []
        assert result.ok, result.error
        (sent,) = emulator.messages  # type: ignore[attr-defined]
    if provider == "aliyun":
        assert sent["phone"] == "13800000001" and sent["params"] == PARAMS and sent["out_id"] == "sms_test1"
    elif provider == "tencent":
        assert sent["phone"] == "+8613800000001"
        assert sent["params"] == ["阳光花园1号楼", "3F yg01-sd-03a", "火警", "4821"]
    elif provider == "twilio":
        assert "阳光花园1号楼" in sent["body"] and "4821" in sent["body"]
    else:
        assert "4821" in sent["text"] and sent["key"] == "sms_test1"


@pytest.mark.parametrize("provider", ["aliyun", "tencent", "twilio", "http"])
async def test_wrong_credentials_are_refused_and_not_retryable(provider: str) -> None:
    async with emulator_for(provider) as emulator:
        wrong: dict[str, Any] = {
            "aliyun": {"access_key_secret": "not-the-secret"},
            "tencent": {"secret_key": "not-the-key"},
            "twilio": {"auth_token": "not-the-token"},
            "http": {"http": {"token": HTTP_SMS["token"], "hmac_secret": "not-the-hmac"}},
        }[provider]
        config = SmsConfig.model_validate(sms_section(provider, emulator.url, **wrong))
        async with aiohttp.ClientSession() as session:
            result = await sender_for(provider)(session, config, message(config))
        assert not result.ok and not result.retryable and not result.unknown
        assert len(emulator.errors) == 1
        assert emulator.messages == []  # type: ignore[attr-defined]


async def test_provider_5xx_is_retryable_and_refused_connection_too() -> None:
    async with emulator_for("tencent") as emulator:
        emulator.script = [503]
        config = SmsConfig.model_validate(sms_section("tencent", emulator.url))
        async with aiohttp.ClientSession() as session:
            result = await sender_for("tencent")(session, config, message(config, "en"))
            assert result.retryable and not result.unknown
            url = emulator.url
    config = SmsConfig.model_validate(sms_section("tencent", url))  # the server is gone now
    async with aiohttp.ClientSession() as session:
        result = await sender_for("tencent")(session, config, message(config))
    assert result.retryable and not result.unknown


def make_store(tmp_path: Path, provider: str, endpoint: str) -> AlertStore:
    notify = notify_config(sms=sms_section(provider, endpoint))
    return AlertStore(tmp_path / "a.sqlite", notify=notify)


def test_inbound_generic_signed_reply_acknowledges_incident(tmp_path: Path) -> None:
    store = make_store(tmp_path, "aliyun", "http://127.0.0.1:9")
    now = int(time.time() * 1000)
    changes = store.apply([alarm("yg01-sd-001"), alarm("yg01-sd-002")], now_ms=now)
    code = changes[0].data["ack_code"]
    body = orjson.dumps({"from": "+8613800000001", "text": f"收到 {code}"})
    headers = {"webhook-id": "msg_in1", "webhook-timestamp": str(now // 1000)}
    headers["webhook-signature"] = Webhook(INBOUND_SECRET).sign("msg_in1", _dt(now), body.decode())
    result = handle_inbound_sms(store, headers=headers, body=body, url="http://x/api/v1/sms/inbound", now_ms=now)
    assert result.status == 200 and len(result.acknowledged) == 2
    assert {a.acknowledged_by for a in store.list_alerts()} == {"sms:王网格"}
    # Tampered, unsigned, unknown sender, unknown code:
    bad = dict(headers, **{"webhook-signature": "v1,AAAA"})
    assert handle_inbound_sms(store, headers=bad, body=body, url="x", now_ms=now).status == 401
    assert handle_inbound_sms(store, headers={}, body=body, url="x", now_ms=now).status == 401
    stranger = orjson.dumps({"from": "+8613999999999", "text": code})
    h2 = dict(headers, **{"webhook-signature": Webhook(INBOUND_SECRET).sign("msg_in1", _dt(now), stranger.decode())})
    assert handle_inbound_sms(store, headers=h2, body=stranger, url="x", now_ms=now).status == 403
    nocode = orjson.dumps({"from": "+8613800000001", "text": "0000000"})
    h3 = dict(headers, **{"webhook-signature": Webhook(INBOUND_SECRET).sign("msg_in1", _dt(now), nocode.decode())})
    assert handle_inbound_sms(store, headers=h3, body=nocode, url="x", now_ms=now).status == 404


def test_inbound_twilio_signed_reply(tmp_path: Path) -> None:
    store = make_store(tmp_path, "twilio", "http://127.0.0.1:9")
    now = int(time.time() * 1000)
    code = store.apply([alarm("yg01-sd-001")], now_ms=now)[0].data["ack_code"]
    url = "https://firegrid.example/api/v1/sms/inbound"
    params = {"From": "+8613800000002", "To": TWILIO["from_number"], "Body": code, "MessageSid": "SM1"}
    # Twilio's documented scheme, computed here independently of alerts.inbound.
    data = url + "".join(k + params[k] for k in sorted(params))
    sig = base64.b64encode(hmac.new(TWILIO["auth_token"].encode(), data.encode(), hashlib.sha1).digest()).decode()
    body = urlencode(params).encode()
    result = handle_inbound_sms(store, headers={"X-Twilio-Signature": sig}, body=body, url=url, now_ms=now)
    assert result.status == 200 and len(result.acknowledged) == 1
    forged = handle_inbound_sms(store, headers={"X-Twilio-Signature": sig}, body=body, url=url + "x", now_ms=now)
    assert forged.status == 401


def _dt(now_ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(now_ms // 1000, tz=UTC)
