"""The voice tier: an unacknowledged fire ends in a text-to-speech call, signed as each provider documents it and
checked by its emulator; at most one call per (incident, person) per escalation step; a daily budget; the
provider's result receipt, relayed signed, is recorded and a key press acknowledges."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import orjson
import pytest
from standardwebhooks import Webhook

from alerts.config import VoiceConfig
from alerts.delivery import Notifier
from alerts.store import AlertStore
from alerts.voice import VoiceCall, sender_for
from alerts.voice.receipts import handle_voice_receipt
from testkit.emulators.scenario import (
    ALIYUN,
    RECEIPT_SECRET,
    TENCENT,
    alarm,
    notify_config,
    routes_with_voice,
    voice_section,
    wait_until,
)
from testkit.emulators.voice import AliyunVoice, TencentVoice

pytestmark = pytest.mark.timeout(60)
PARAMS = {"building": "阳光花园1号楼", "location": "3F yg01-sd-03a", "severity": "火警", "code": "4821", "count": "1"}


def emulator_for(provider: str) -> AliyunVoice | TencentVoice:
    if provider == "aliyun":
        return AliyunVoice(
            access_key_id=ALIYUN["access_key_id"],
            access_key_secret=ALIYUN["access_key_secret"],
            templates={"TTS_100001", "TTS_100002"},
        )
    return TencentVoice(
        secret_id=TENCENT["secret_id"],
        secret_key=TENCENT["secret_key"],
        sdk_app_id="1400000009",
        templates={"3000001", "3000002"},
    )


def call_for(config: VoiceConfig) -> VoiceCall:
    template = config.templates["zh"]
    return VoiceCall(
        msg_id="voice_1", out_id="17", phone="+8613800000003", lang="zh", template=template, params=PARAMS, play_times=2
    )


@pytest.mark.parametrize("provider", ["aliyun", "tencent"])
async def test_provider_request_verified_by_emulator(provider: str) -> None:
    async with emulator_for(provider) as emulator:
        config = VoiceConfig.model_validate(voice_section(provider, emulator.url))
        async with aiohttp.ClientSession() as session:
            result = await sender_for(provider)(session, config, call_for(config))
        assert emulator.errors == [] and result.ok, result.error
        (placed,) = emulator.calls  # type: ignore[union-attr]
    assert result.provider_id == placed["call_id"] and placed["play_times"] == 2
    if provider == "aliyun":
        assert placed["phone"] == "13800000003" and placed["params"] == PARAMS and placed["out_id"] == "17"
    else:
        assert placed["phone"] == "+8613800000003" and placed["params"] == ["阳光花园1号楼", "3F yg01-sd-03a", "火警"]


@pytest.mark.parametrize("provider", ["aliyun", "tencent"])
async def test_wrong_credentials_refused_not_retryable(provider: str) -> None:
    async with emulator_for(provider) as emulator:
        wrong = {"aliyun": {"access_key_secret": "nope"}, "tencent": {"secret_key": "nope"}}[provider]
        config = VoiceConfig.model_validate(voice_section(provider, emulator.url, **wrong))
        async with aiohttp.ClientSession() as session:
            result = await sender_for(provider)(session, config, call_for(config))
        assert not result.ok and not result.retryable and not result.unknown
        assert len(emulator.errors) == 1 and emulator.calls == []  # type: ignore[union-attr]


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[None]:
    task = asyncio.create_task(notifier.run())
    try:
        yield
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def signed(body: object, now_ms: int) -> tuple[dict[str, str], bytes]:
    raw = orjson.dumps(body)
    stamp = datetime.fromtimestamp(now_ms / 1000, tz=UTC)
    headers = {"webhook-id": f"msg_{now_ms}", "webhook-timestamp": str(now_ms // 1000)}
    headers["webhook-signature"] = Webhook(RECEIPT_SECRET).sign(headers["webhook-id"], stamp, raw.decode())
    return headers, raw


@pytest.mark.parametrize("provider", ["aliyun", "tencent"])
async def test_unacknowledged_fire_calls_each_person_once_and_a_key_press_acknowledges(
    tmp_path: Path, provider: str
) -> None:
    now = [int(time.time() * 1000)]
    async with emulator_for(provider) as emulator:
        notify = notify_config(voice=voice_section(provider, emulator.url), routes=routes_with_voice())
        store = AlertStore(tmp_path / "a.sqlite", notify=notify, building_names={"yg01": "阳光花园1号楼"})
        notifier = Notifier(store, clock=lambda: now[0])
        async with running(notifier):
            first = store.apply([alarm("yg01-sd-001")], now_ms=now[0])[0].alert_id
            assert first is not None
            for _ in range(2):  # tier 1 (station leader, no voice), then tier 2: the voice tier
                now[0] += 60_000
                notifier.wake()
                await wait_until(lambda: store.get_alert(first).tier >= 1)  # type: ignore[union-attr]
            await wait_until(lambda: store.get_alert(first).tier == 2)  # type: ignore[union-attr]
            # A second detector of the same incident reaching the voice tier later rings nobody twice.
            second = store.apply([alarm("yg01-sd-002")], now_ms=now[0])[0].alert_id
            assert second is not None
            for step in (1, 2):
                now[0] += 60_000
                notifier.wake()
                await wait_until(lambda s=step: store.get_alert(second).tier == s)  # type: ignore[misc,union-attr]
            await emulator.wait_for(lambda: len(emulator.calls) == 2)  # type: ignore[union-attr]
            await wait_until(lambda: notifier.idle)
            await asyncio.sleep(0.2)  # nothing more rings (a negative check)
            calls = list(emulator.calls)  # type: ignore[union-attr]
            assert sorted(c["phone"][-11:] for c in calls) == ["13800000003", "13800000004"]
            assert emulator.errors == []
            leader = next(c for c in calls if c["phone"].endswith("13800000003"))
            # A tampered receipt is refused; the signed one with key 1 acknowledges the whole incident.
            receipt = (
                emulator.receipt(leader, dtmf="1")  # type: ignore[union-attr]
                if provider == "aliyun"
                else emulator.receipt(leader, keypress="1")  # type: ignore[union-attr]
            )
            headers, raw = signed(receipt, now[0])
            tampered = raw.replace(b'"1"', b'"2"')
            assert handle_voice_receipt(store, headers=headers, body=tampered, now_ms=now[0]).status == 401
            assert handle_voice_receipt(store, headers={}, body=raw, now_ms=now[0]).status == 401
            result = handle_voice_receipt(store, headers=headers, body=raw, now_ms=now[0])
            assert result.status == 200 and sorted(result.acknowledged) == sorted([first, second])
    alert = store.get_alert(first)
    assert alert is not None and alert.state == "acknowledged" and alert.acknowledged_by == "voice:张站长"
    trail = [(a.action, a.by) for a in alert.audit]
    assert ("voice_receipt", "voice:张站长") in trail and ("acknowledged", "voice:张站长") in trail
    assert [a.action for a in alert.audit].count("voice_call") == 2


async def test_daily_budget_suppresses_and_ack_calls_off_waiting_calls(tmp_path: Path) -> None:
    now = [int(time.time() * 1000)]
    async with emulator_for("aliyun") as emulator:
        notify = notify_config(voice=voice_section("aliyun", emulator.url, daily_budget=1), routes=routes_with_voice())
        store = AlertStore(tmp_path / "a.sqlite", notify=notify)
        notifier = Notifier(store, clock=lambda: now[0])
        async with running(notifier):
            ids = [store.apply([alarm(f"{b}-sd-001", building=b)], now_ms=now[0])[0].alert_id for b in ("b1", "b2")]
            for _ in range(2):
                now[0] += 60_000
                notifier.wake()
                await wait_until(lambda: all(store.get_alert(i).tier >= 1 for i in ids))  # type: ignore[union-attr]
            await wait_until(lambda: all(store.get_alert(i).tier == 2 for i in ids))  # type: ignore[union-attr]
            await wait_until(lambda: {r.state for r in store.outbox(channel="voice")} <= {"sent", "suppressed"})
        states = sorted(r.state for r in store.outbox(channel="voice"))
        assert states == ["sent", "sent", "suppressed", "suppressed"]  # one call per number per day
        assert len(emulator.calls) == 2  # type: ignore[union-attr]
    # An acknowledged incident's waiting calls are called off.
    store2 = AlertStore(tmp_path / "b.sqlite", notify=notify)
    a = store2.apply([alarm("c1-sd-001", building="c1")], now_ms=now[0])[0].alert_id
    assert a is not None
    store2.escalate_due(now_ms=now[0] + 60_000)
    store2.escalate_due(now_ms=now[0] + 120_000)
    assert {r.state for r in store2.outbox(channel="voice")} == {"pending"}
    store2.acknowledge(a, by="王网格", now_ms=now[0] + 121_000)
    assert {r.state for r in store2.outbox(channel="voice")} == {"cancelled"}
