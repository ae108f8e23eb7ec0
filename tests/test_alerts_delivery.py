"""Delivery through the outbox against real aiohttp receivers: signed webhooks (verified with the
``standardwebhooks`` reference library), SMS through a provider emulator that verifies ACS3-HMAC-SHA256, retries,
escalation, crash-resume, storms and budgets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from alerts.config import NotifyConfig
from alerts.delivery import Notifier
from alerts.store import AlertChange, AlertStore
from rules.types import Severity
from testkit.emulators.aliyun import AliyunSms
from testkit.emulators.scenario import ALIYUN, GOV_SECRET, WEBHOOK_SECRET, alarm, notify_config, sms_section, wait_until
from testkit.emulators.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver  # type: ignore[misc]


@pytest.fixture
async def gov() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(GOV_SECRET, path="/gov") as receiver:
        yield receiver  # type: ignore[misc]


@pytest.fixture
async def aliyun() -> AsyncIterator[AliyunSms]:
    emulator = AliyunSms(
        access_key_id=ALIYUN["access_key_id"],
        access_key_secret=ALIYUN["access_key_secret"],
        sign_name=ALIYUN["sign_name"],
        templates={"SMS_100001", "SMS_100002"},
    )
    async with emulator:
        yield emulator  # type: ignore[misc]


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(notifier.run())
    try:
        yield task
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def settled(notifier: Notifier, store: AlertStore) -> bool:
    nxt = store.next_due_ms()
    return notifier.idle and (nxt is None or nxt > notifier.clock() + 1000)


def config(hook: WebhookReceiver, aliyun: AliyunSms | None = None, **extra: Any) -> NotifyConfig:
    sms = sms_section("aliyun", aliyun.url) if aliyun else None
    return notify_config(webhook_url=hook.endpoint, sms=sms, **extra)


def store_for(tmp_path: Path, notify: NotifyConfig) -> AlertStore:
    return AlertStore(tmp_path / "alerts.sqlite", notify=notify, building_names={"yg01": "阳光花园1号楼"})


async def test_fire_reaches_webhook_governance_and_sms_with_valid_signatures(
    tmp_path: Path, hook: WebhookReceiver, gov: WebhookReceiver, aliyun: AliyunSms
) -> None:
    store = store_for(
        tmp_path, config(hook, aliyun, governance={"url": gov.endpoint, "secret": GOV_SECRET, "allow_private": True})
    )
    notifier = Notifier(store)
    async with running(notifier):
        changes = store.apply([alarm("yg01-sd-03a")], now_ms=notifier.clock())
        await hook.wait_for(lambda: len(hook.accepted) >= 2)
        await gov.wait_for(lambda: len(gov.accepted) >= 2)
        await aliyun.wait_for(lambda: len(aliyun.messages) >= 2)
        await wait_until(lambda: settled(notifier, store))
    assert hook.errors == [] and gov.errors == [] and aliyun.errors == []
    raised = hook.of_type("alert.raised")[0].body
    assert raised["data"]["severity"] == "fire" and raised["data"]["device"] == "yg01-sd-03a"
    assert raised["data"]["building_name"] == "阳光花园1号楼"
    assert {d.body["type"] for d in gov.accepted} == {"alert.raised", "incident.opened"}
    code = changes[0].data["ack_code"]
    by_phone = {m["phone"]: m for m in aliyun.messages}
    assert set(by_phone) == {"13800000001", "13800000002"}
    assert by_phone["13800000001"]["template"] == "SMS_100001"  # zh
    assert by_phone["13800000002"]["template"] == "SMS_100002"  # en
    assert by_phone["13800000001"]["params"]["code"] == code
    assert by_phone["13800000001"]["params"]["severity"] == "火警"
    assert by_phone["13800000001"]["params"]["location"].startswith("3F")
    assert {r.state for r in store.outbox()} == {"sent"}


async def test_receiver_failing_three_times_gets_it_exactly_once_more_with_same_id(
    tmp_path: Path, hook: WebhookReceiver
) -> None:
    notify = config(hook)
    notify.webhooks[0].events = ["alert.raised"]
    notify.webhooks[0].timeout_s = 0.5
    hook.script = [500, ("hang", 2), ("retry-after", 429, 0)]  # 5xx, a timeout, 429 honouring Retry-After
    store = store_for(tmp_path, notify)
    notifier = Notifier(store)
    async with running(notifier):
        store.apply([alarm("yg01-sd-03a")], now_ms=notifier.clock())
        await hook.wait_for(lambda: len(hook.accepted) == 1)
        await wait_until(lambda: settled(notifier, store))
    assert hook.errors == []
    ids = [d.msg_id for d in hook.attempts if d.status != 599] + ["hung"]
    assert len(hook.attempts) in (3, 4)  # the hung attempt is recorded only if it finished before shutdown
    assert len({d.msg_id for d in hook.attempts}) == 1, ids
    assert [d.status for d in hook.attempts if d.status != 599] == [500, 429, 200]
    assert len(hook.accepted) == 1
    (row,) = store.outbox()
    assert row.state == "sent" and row.attempts == 4


async def test_410_disables_endpoint_and_4xx_is_not_retried(tmp_path: Path, hook: WebhookReceiver) -> None:
    notify = config(hook)
    notify.webhooks[0].events = ["alert.raised"]
    store = store_for(tmp_path, notify)
    notifier = Notifier(store)
    hook.script = [400]
    async with running(notifier):
        store.apply([alarm("yg01-sd-001")], now_ms=notifier.clock())
        await wait_until(lambda: store.outbox()[0].state == "failed")
        hook.script = [410]
        store.apply([alarm("yg01-sd-002")], now_ms=notifier.clock())
        await wait_until(lambda: len(store.disabled_endpoints()) == 1)
        store.apply([alarm("yg01-sd-003")], now_ms=notifier.clock())
        await wait_until(lambda: settled(notifier, store))
    assert [d.status for d in hook.attempts] == [400, 410]  # one try each, nothing after 410
    assert len(store.outbox()) == 2  # no row for a disabled endpoint


async def test_redirect_is_not_followed(tmp_path: Path, hook: WebhookReceiver) -> None:
    async with WebhookReceiver(WEBHOOK_SECRET, path="/elsewhere") as other:
        notify = config(hook)
        notify.webhooks[0].events = ["alert.raised"]
        hook.script = [("redirect", other.endpoint)]
        store = store_for(tmp_path, notify)
        notifier = Notifier(store)
        async with running(notifier):
            store.apply([alarm("yg01-sd-001")], now_ms=notifier.clock())
            await wait_until(lambda: store.outbox()[0].state == "failed")
        assert other.requests == 0
        assert "redirect" in (store.outbox()[0].last_error or "")


async def test_private_destination_refused_unless_allowed(tmp_path: Path, hook: WebhookReceiver) -> None:
    notify = config(hook)
    notify.webhooks[0].allow_private = False  # bypassing config validation to test the send-time check
    store = store_for(tmp_path, notify)
    notifier = Notifier(store)
    async with running(notifier):
        store.apply([alarm("yg01-sd-001")], now_ms=notifier.clock())
        await wait_until(lambda: all(r.state == "failed" for r in store.outbox()))
    assert hook.requests == 0
    assert "private" in (store.outbox()[0].last_error or "")


async def test_unacknowledged_fire_escalates_on_time(tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms) -> None:
    store = store_for(tmp_path, config(hook, aliyun, ack_timeout_s=1))
    escalated: asyncio.Future[AlertChange] = asyncio.get_running_loop().create_future()

    def on_change(change: AlertChange) -> None:
        if change.type == "alert.escalated" and not escalated.done():
            escalated.set_result(change)

    store.add_listener(on_change)
    notifier = Notifier(store)
    async with running(notifier):
        raised_at = notifier.clock()
        alert_id = store.apply([alarm("yg01-sd-03a")], now_ms=raised_at)[0].alert_id
        change = await asyncio.wait_for(escalated, 10)
        await aliyun.wait_for(lambda: any(m["phone"] == "13800000003" for m in aliyun.messages))
        await hook.wait_for(lambda: bool(hook.of_type("alert.escalated")))
    assert change.alert_id == alert_id and change.data["escalated_to"] == ["张站长"]
    assert change.ts_ms - raised_at >= 1000  # not before the ack timeout
    assert aliyun.errors == []


async def test_escalation_follows_injected_clock_and_stops_on_ack(
    tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms
) -> None:
    now = [1_800_000_000_000]
    store = store_for(tmp_path, config(hook, aliyun, ack_timeout_s=60))
    events: list[AlertChange] = []
    store.add_listener(lambda c: events.append(c) if c.type == "alert.escalated" else None)
    notifier = Notifier(store, clock=lambda: now[0])
    async with running(notifier):
        first = store.apply([alarm("yg01-sd-001")], now_ms=now[0])[0].alert_id
        second = store.apply([alarm("yg02-sd-001", building="yg02")], now_ms=now[0])[0].alert_id
        assert first is not None and second is not None
        store.acknowledge(second, by="李志愿", now_ms=now[0] + 30_000)
        now[0] += 59_000
        notifier.wake()
        await wait_until(lambda: notifier.idle)
        assert events == []
        now[0] += 1_000
        notifier.wake()
        await wait_until(lambda: len(events) == 1)
        now[0] += 60_000  # the next rung: the community duty officer
        notifier.wake()
        await wait_until(lambda: len(events) == 2)
        await aliyun.wait_for(lambda: {"13800000003", "13800000004"} <= {m["phone"] for m in aliyun.messages})
        await hook.wait_for(lambda: len(hook.of_type("alert.escalated")) == 2)
    assert [e.alert_id for e in events] == [first, first]
    assert [e.data["escalated_to"] for e in events] == [["张站长"], ["赵值班"]]
    assert hook.errors == [] and aliyun.errors == []  # signed with wall-clock time even under a fake clock


async def test_crash_mid_delivery_resends_nothing_acknowledged_and_loses_nothing(
    tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms
) -> None:
    notify = config(hook, aliyun)
    notify.webhooks[0].timeout_s = 30
    buildings = ["yg01", "yg02", "yg03", "hp01"]
    # The third webhook request and the second SMS hang: the "gateway" dies while they are in flight; the SMS
    # provider processes the hung request anyway (sent, but we never heard back).
    hook.script = [200, 200, ("hang", 3)]
    aliyun.script = [None, ("hang", 3, "process")]
    store = store_for(tmp_path, notify)
    notifier = Notifier(store, workers=1)
    task = asyncio.create_task(notifier.run())
    for b in buildings:
        store.apply([alarm(f"{b}-sd-001", building=b)], now_ms=notifier.clock())
    await hook.wait_for(lambda: hook.requests >= 3 and len(hook.accepted) == 2)
    await aliyun.wait_for(lambda: aliyun.requests >= 2)
    task.cancel()  # crash: nothing gets to finish or record anything
    with contextlib.suppress(asyncio.CancelledError):
        await task
    store.close()
    hook.script, aliyun.script = [], []

    store2 = store_for(tmp_path, notify)
    notifier2 = Notifier(store2, workers=4)
    async with running(notifier2):
        await wait_until(lambda: settled(notifier2, store2), within=20)
    rows = store2.outbox()
    webhook_ids = {r.msg_id for r in rows if r.channel == "webhook"}
    accepted = hook.accepted_ids()
    assert len(accepted) == len(set(accepted)), "a webhook acknowledged by the receiver was sent again"
    assert set(accepted) == webhook_ids, "a webhook was lost"
    states = [r.state for r in rows if r.channel == "sms"]
    assert states.count("unknown") == 1 and states.count("sent") == len(states) - 1
    # The provider finishes the hung request (it did send that SMS): exactly one message per outbox row.
    await aliyun.wait_for(lambda: len(aliyun.messages) >= len(states), within=10)
    out_ids = [m["out_id"] for m in aliyun.messages]
    assert sorted(out_ids) == sorted(r.msg_id for r in rows if r.channel == "sms"), "an SMS resent or lost"


async def test_two_hundred_detectors_one_sms_per_recipient(
    tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms
) -> None:
    store = store_for(tmp_path, config(hook, aliyun))
    notifier = Notifier(store)
    async with running(notifier):
        for batch in range(10):  # ten group commits, twenty detectors each, while delivery runs
            store.apply([alarm(f"yg01-sd-{batch}-{i}", floor=i % 18 + 1) for i in range(20)], now_ms=notifier.clock())
            await asyncio.sleep(0)
        await hook.wait_for(lambda: len(hook.of_type("alert.raised")) == 200)
        await wait_until(lambda: settled(notifier, store))
    assert sorted(m["phone"] for m in aliyun.messages) == ["13800000001", "13800000002"]
    assert len(hook.of_type("incident.opened")) == 1
    assert len(hook.of_type("incident.updated")) < 20  # coalesced, not one per detector
    assert aliyun.errors == [] and hook.errors == []


async def test_sms_timeout_becomes_unknown_never_resent(
    tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms
) -> None:
    notify = config(hook, aliyun)
    assert notify.sms is not None
    notify.sms.timeout_s = 0.3
    aliyun.script = [("hang", 1, "process")]
    store = store_for(tmp_path, notify)
    notifier = Notifier(store, workers=1)
    async with running(notifier):
        store.apply([alarm("yg01-sd-001")], now_ms=notifier.clock())
        await wait_until(lambda: any(r.state == "unknown" for r in store.outbox(channel="sms")))
        await wait_until(lambda: settled(notifier, store))
        await aliyun.wait_for(lambda: len(aliyun.messages) == 2)
    states = sorted(r.state for r in store.outbox(channel="sms"))
    assert states == ["sent", "unknown"]
    assert aliyun.requests == 2  # one per recipient, no resend of the one that timed out
    # The operator checks with the provider: delivered (it was: the emulator processed it) -> sent, no resend.
    (unknown,) = store.outbox(state="unknown")
    store.reconcile_sms(unknown.id, delivered=True, now_ms=notifier.clock())
    assert sorted(r.state for r in store.outbox(channel="sms")) == ["sent", "sent"]


async def test_daily_budget_and_warning(tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms) -> None:
    sms = sms_section("aliyun", aliyun.url, daily_budget=3, budget_warning=2)
    roster = [{"name": "王网格", "phone": "+8613800000001", "role": "grid_worker"}]
    routes = [{"name": "all", "min_severity": "trouble", "tiers": [{"roles": ["grid_worker"]}]}]
    notify = notify_config(webhook_url=hook.endpoint, sms=sms, roster=roster, routes=routes)
    store = store_for(tmp_path, notify)
    warnings: list[AlertChange] = []
    store.add_listener(lambda c: warnings.append(c) if c.type == "sms.budget_warning" else None)
    notifier = Notifier(store, workers=1)
    async with running(notifier):
        for b in ["yg01", "yg02", "yg03", "hp01", "hp02"]:  # five incidents: five pages wanted
            store.apply([alarm(f"{b}-sd-1", building=b, severity=Severity.TROUBLE)], now_ms=notifier.clock())
        await wait_until(lambda: len([r for r in store.outbox(channel="sms") if r.state == "pending"]) == 0)
        await wait_until(lambda: settled(notifier, store))
    states = [r.state for r in store.outbox(channel="sms")]
    assert states.count("sent") == 3 and states.count("suppressed") == 2
    assert len(aliyun.messages) == 3
    assert len(warnings) == 1 and warnings[0].data["sent_today"] == 2


async def test_rate_limit_delays_never_drops(tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms) -> None:
    sms = sms_section("aliyun", aliyun.url, rate={"per_recipient_per_min": 1, "global_per_min": 100})
    roster = [{"name": "王网格", "phone": "+8613800000001", "role": "grid_worker"}]
    routes = [{"name": "all", "min_severity": "trouble", "tiers": [{"roles": ["grid_worker"]}]}]
    now = [1_800_000_000_000]
    store = store_for(tmp_path, notify_config(webhook_url=hook.endpoint, sms=sms, roster=roster, routes=routes))
    notifier = Notifier(store, clock=lambda: now[0])
    async with running(notifier):
        for b in ["yg01", "yg02"]:
            store.apply([alarm(f"{b}-sd-1", building=b)], now_ms=now[0])
        await aliyun.wait_for(lambda: len(aliyun.messages) == 1)
        await wait_until(lambda: any(r.last_error == "rate limited" for r in store.outbox(channel="sms")))
        assert len(aliyun.messages) == 1
        now[0] += 61_000
        notifier.wake()
        await aliyun.wait_for(lambda: len(aliyun.messages) == 2)


async def test_sms_provider_failing_then_recovering_sends_once(
    tmp_path: Path, hook: WebhookReceiver, aliyun: AliyunSms
) -> None:
    aliyun.script = [503, 500, ("retry-after", 429, 0)]  # provider trouble: retried with backoff, no duplicate
    roster = [{"name": "王网格", "phone": "+8613800000001", "role": "grid_worker"}]
    routes = [{"name": "all", "min_severity": "trouble", "tiers": [{"roles": ["grid_worker"]}]}]
    store = store_for(
        tmp_path,
        notify_config(webhook_url=hook.endpoint, sms=sms_section("aliyun", aliyun.url), roster=roster, routes=routes),
    )
    notifier = Notifier(store)
    async with running(notifier):
        store.apply([alarm("yg01-sd-001")], now_ms=notifier.clock())
        await aliyun.wait_for(lambda: len(aliyun.messages) == 1)
        await wait_until(lambda: settled(notifier, store))
    assert aliyun.requests == 4 and aliyun.errors == []
    (row,) = store.outbox(channel="sms")
    assert row.state == "sent" and row.attempts == 4
