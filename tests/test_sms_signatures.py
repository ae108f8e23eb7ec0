"""Known-answer tests: each provider signer against the worked example its provider publishes.

The SMS emulators in ``testkit/emulators`` verify signatures with code written by the same team as the signers, so a
misreading of a provider's document could pass both.  These vectors come from the providers' own documentation
(Alibaba Cloud "V3版本请求体&签名机制", Tencent Cloud API 3.0 "签名方法 v3", Twilio "Webhooks security" and the
twilio-php RequestValidator tests), so a signer that passes them signs the way the real service checks.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest

from alerts.inbound import twilio_signature
from alerts.sms import aliyun, tencent


def test_aliyun_acs3_matches_the_documented_example() -> None:
    headers = aliyun.signed_headers(
        method="POST",
        url="https://ecs.cn-shanghai.aliyuncs.com/",
        query={"ImageId": "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd", "RegionId": "cn-shanghai"},
        body=b"",
        key_id="YourAccessKeyId",
        key_secret="YourAccessKeySecret",
        action="RunInstances",
        version="2014-05-26",
        now=datetime(2023, 10, 26, 10, 22, 32, tzinfo=UTC),
        nonce="3156853299f313e23d1673dc12e1703d",
    )
    assert headers["authorization"] == (
        "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,"
        "SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,"
        "Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    )
    assert headers["x-acs-content-sha256"] == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_aliyun_signature_depends_on_every_signed_input() -> None:
    base = {
        "method": "POST",
        "url": "https://dysmsapi.aliyuncs.com/",
        "query": {"PhoneNumbers": "13800138000", "SignName": "消防"},
        "body": b"",
        "key_id": "id",
        "key_secret": "secret",
        "action": "SendSms",
        "version": "2017-05-25",
        "now": datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC),
        "nonce": "n1",
    }
    reference = aliyun.signed_headers(**base)["authorization"]  # type: ignore[arg-type]
    changes = {
        "query": {"PhoneNumbers": "13800138001", "SignName": "消防"},
        "body": b"x",
        "key_secret": "secret2",
        "nonce": "n2",
        "now": datetime(2026, 11, 30, 8, 0, 1, tzinfo=UTC),
    }
    for name, value in changes.items():
        assert aliyun.signed_headers(**{**base, name: value})["authorization"] != reference, name  # type: ignore[arg-type]


# Tencent's worked example (service cvm, DescribeInstances, 2019-02-25): the published canonical request, its hash
# and the signature.  The secret key is the documentation's masked one, asterisks included.
TENCENT_CANONICAL = (
    "POST\n/\n\n"
    "content-type:application/json; charset=utf-8\n"
    "host:cvm.tencentcloudapi.com\n"
    "\n"
    "content-type;host\n"
    "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
)


def test_tencent_tc3_matches_the_documented_example() -> None:
    payload = b'{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
    assert hashlib.sha256(payload).hexdigest() == TENCENT_CANONICAL.rsplit("\n", 1)[1]
    assert (
        hashlib.sha256(TENCENT_CANONICAL.encode()).hexdigest()
        == "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
    )
    signature = tencent.tc3_signature(
        secret_key="Gu5t9xGARNpq86cd98joQYCN3*******",
        service="cvm",
        timestamp=1551113065,
        canonical_request=TENCENT_CANONICAL,
    )
    assert signature == "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"


def test_tencent_send_sms_headers_carry_the_scope_and_a_signature_of_their_canonical_request() -> None:
    payload = b'{"PhoneNumberSet":["+8613800138000"]}'
    headers = tencent.signed_headers(
        url="https://sms.tencentcloudapi.com/",
        payload=payload,
        secret_id="AKIDEXAMPLE",
        secret_key="secret",
        action="SendSms",
        region="ap-guangzhou",
        timestamp=1551113065,
    )
    canonical = (
        "POST\n/\n\n"
        "content-type:application/json; charset=utf-8\nhost:sms.tencentcloudapi.com\nx-tc-action:sendsms\n\n"
        f"content-type;host;x-tc-action\n{hashlib.sha256(payload).hexdigest()}"
    )
    expected = tencent.tc3_signature(
        secret_key="secret", service="sms", timestamp=1551113065, canonical_request=canonical
    )
    assert headers["Authorization"] == (
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2019-02-25/sms/tc3_request, "
        f"SignedHeaders=content-type;host;x-tc-action, Signature={expected}"
    )
    assert headers["X-TC-Timestamp"] == "1551113065"


TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}


def test_twilio_request_signature_matches_the_documented_example() -> None:
    assert twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="


@pytest.mark.parametrize(
    ("token", "url", "params"),
    [
        ("12346", TWILIO_URL, TWILIO_PARAMS),
        ("12345", TWILIO_URL + "&x=1", TWILIO_PARAMS),
        ("12345", TWILIO_URL, {**TWILIO_PARAMS, "Digits": "9999"}),
    ],
)
def test_twilio_signature_changes_with_any_input(token: str, url: str, params: dict[str, str]) -> None:
    assert twilio_signature(token, url, params) != "RSOYDt4T1cUTdK1PDd93/VVr8B8="
