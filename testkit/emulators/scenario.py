"""Helpers for alerts tests and benches: transitions, a notify config wired to local emulators, awaiting."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

from alerts.config import NotifyConfig
from rules.types import AlertTransition, Evidence, Severity

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"firegrid-test-webhook-secret-32b").decode()
GOV_SECRET = "whsec_" + base64.b64encode(b"firegrid-governance-secret-32byt").decode()
INBOUND_SECRET = "whsec_" + base64.b64encode(b"firegrid-inbound-sms-secret-32by").decode()
ALIYUN = {"access_key_id": "LTAI5tTestKeyId", "access_key_secret": "aliyun-test-secret", "sign_name": "东风社区"}
TENCENT = {
    "secret_id": "AKIDtestsecretid",
    "secret_key": "tencent-test-key",
    "sdk_app_id": "1400000001",
    "sign_name": "东风社区",
}
TWILIO = {"account_sid": "AC" + "0" * 32, "auth_token": "twilio-test-token", "from_number": "+15005550006"}
WECOM = {"key": "693a91f6-7fff-4bc4-97a0-0ec2sifa5aaa"}
DINGTALK = {"key": "dingtalk-test-access-token", "secret": "SECdingtalk-test-signing-secret"}
FEISHU = {"key": "00000000-feishu-test-hook", "secret": "feishu-test-signing-secret"}
RECEIPT_SECRET = "whsec_" + base64.b64encode(b"firegrid-voice-receipt-secret-32").decode()
VOICE_TEMPLATES = {
    "aliyun": {
        "zh": {"template_id": "TTS_100001", "text": "${building}${location}${severity}，请立即处置，确认请按1"},
        "en": {"template_id": "TTS_100002", "text": "${severity} at ${building} ${location}. Press 1 to acknowledge"},
    },
    "tencent": {
        "zh": {"template_id": "3000001", "text": "{1}{2}{3}，请立即处置，确认请按1"},
        "en": {"template_id": "3000002", "text": "{3} at {1} {2}. Press 1 to acknowledge"},
    },
}
HTTP_SMS = {"token": "http-sms-token", "hmac_secret": "http-sms-hmac"}

ROSTER = [
    {"name": "王网格", "phone": "+8613800000001", "role": "grid_worker", "grids": ["g01"]},
    {"name": "李志愿", "phone": "+8613800000002", "role": "volunteer", "grids": ["g01"], "lang": "en"},
    {"name": "张站长", "phone": "+8613800000003", "role": "station_leader", "grids": ["g01"]},
    {"name": "赵值班", "phone": "+8613800000004", "role": "duty_officer"},
]
ROUTES = [
    {
        "name": "fire",
        "min_severity": "fire",
        "tiers": [{"roles": ["grid_worker", "volunteer"]}, {"roles": ["station_leader"]}, {"roles": ["duty_officer"]}],
    },
    {"name": "trouble", "min_severity": "trouble", "tiers": [{"roles": ["grid_worker"]}]},
]


def sms_section(provider: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"provider": provider, "endpoint": endpoint, "allow_private": True, "timeout_s": 2}
    if provider == "aliyun":
        section |= ALIYUN
        section["templates"] = {
            "zh": {"template_id": "SMS_100001", "text": "【消防】{building}{location}{severity}，回复{code}"},
            "en": {"template_id": "SMS_100002", "text": "{severity} {building} {location} reply {code}"},
        }
    elif provider == "tencent":
        section |= TENCENT
        section["templates"] = {
            "zh": {"template_id": "2000001", "text": "{1}{2}{3}，回复{4}确认"},
            "en": {"template_id": "2000002", "text": "{1} {2} {3} reply {4}"},
        }
    elif provider == "twilio":
        section |= TWILIO
    elif provider == "http":
        section["endpoint"] = endpoint + "/send"
        section["http"] = {"token": HTTP_SMS["token"], "hmac_secret": HTTP_SMS["hmac_secret"]}
    section["inbound_secret"] = INBOUND_SECRET
    return section | extra


def robots_section(*, wecom: str, dingtalk: str, feishu: str | None = None) -> list[dict[str, Any]]:
    """``notify.robots`` for the robot emulators at these base URLs (``wecom``, ``dingtalk``, ``feishu``)."""
    robots: list[dict[str, Any]] = [
        {"name": "grid-wecom", "platform": "wecom", "endpoint": wecom, "allow_private": True, "timeout_s": 2} | WECOM,
        {"name": "station-dingtalk", "platform": "dingtalk", "endpoint": dingtalk, "allow_private": True}
        | {"timeout_s": 2}
        | DINGTALK,
    ]
    if feishu is not None:
        robots.append(
            {"name": "ops-feishu", "platform": "feishu", "endpoint": feishu, "allow_private": True, "lang": "en"}
            | {"timeout_s": 2}
            | FEISHU
        )
    return robots


def routes_with_robots(robots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ROUTES with every robot on the fire route's first tier and the trouble route."""
    names = [r["name"] for r in robots]
    fire, trouble = ROUTES
    tiers = [dict(fire["tiers"][0], robots=names), *fire["tiers"][1:]]
    return [dict(fire, tiers=tiers), dict(trouble, tiers=[dict(trouble["tiers"][0], robots=names)])]


def voice_section(provider: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {"provider": provider, "endpoint": endpoint, "allow_private": True, "timeout_s": 2}
    if provider == "aliyun":
        section |= {"access_key_id": ALIYUN["access_key_id"], "access_key_secret": ALIYUN["access_key_secret"]}
    else:
        section |= {"secret_id": TENCENT["secret_id"], "secret_key": TENCENT["secret_key"], "sdk_app_id": "1400000009"}
    section["templates"] = VOICE_TEMPLATES[provider]
    section["receipt_secret"] = RECEIPT_SECRET
    return section | extra


def routes_with_voice() -> list[dict[str, Any]]:
    """ROUTES whose fire route ends in a voice tier: the station leader is called when tier 1 did not answer."""
    fire, trouble = ROUTES
    tiers = [*fire["tiers"][:2], {"roles": ["station_leader", "duty_officer"], "voice": True}]
    return [dict(fire, tiers=tiers), trouble]


def notify_config(
    *,
    webhook_url: str | None = None,
    sms: dict[str, Any] | None = None,
    governance_url: str | None = None,
    **extra: Any,
) -> NotifyConfig:
    data: dict[str, Any] = {"roster": ROSTER, "routes": ROUTES, "retry": {"base_s": 0.05, "max_s": 0.2}}
    if webhook_url:
        data["webhooks"] = [{"url": webhook_url, "secret": WEBHOOK_SECRET, "allow_private": True, "timeout_s": 2}]
    if governance_url:
        data["governance"] = {"url": governance_url, "secret": GOV_SECRET, "allow_private": True, "timeout_s": 2}
    if sms is not None:
        data["sms"] = sms
    data |= extra
    return NotifyConfig.model_validate(data)


def alarm(
    device: str,
    *,
    building: str = "yg01",
    grid: str = "g01",
    floor: int | None = 3,
    severity: Severity = Severity.FIRE,
    transition: str = "raised",
    ts_ms: int = 1_700_000_000_000,
    rule: str = "smoke_alarm",
    test: bool = False,
    **extra: Any,
) -> AlertTransition:
    kwargs: dict[str, Any] = dict(
        transition=transition,
        key=f"{rule}:{building}:{floor}:{device}",
        rule=rule,
        severity=severity,
        building=building,
        floor=floor,
        device=device,
        ts_ms=ts_ms,
        reason=f"{device} smoke 0.31 dB/m",
        value=0.31,
        confirmed=None,
        test=test,
        grid=grid,
        evidence=(Evidence(ts_ms=ts_ms, device=device, metric="smoke", value=0.31),),
    )
    kwargs |= extra
    return AlertTransition(**kwargs)


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, step: float = 0.01) -> None:
    """Poll a condition with a deadline (for state with no event to await, e.g. a SQLite row)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("condition not reached before the deadline")
        await asyncio.sleep(step)
