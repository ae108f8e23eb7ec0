"""Group robots (WeCom, DingTalk, Feishu) against emulators that check each request as the platform documents it
(URL and key, body shape, signature, timestamp window, rate limit answers): one message per incident update,
coalesced, fire first, never over a robot's rate limit, never dropped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from alerts.config import NotifyConfig, RobotConfig
from alerts.delivery import Notifier
from alerts.robots import sender_for
from alerts.robots.limit import RobotLimiter
from alerts.robots.render import IncidentUpdate, render
from alerts.store import AlertStore
from rules.types import Severity
from testkit.emulators.robots import DingTalkRobot, FeishuBot, RobotEmulator, WeComRobot
from testkit.emulators.scenario import (
    DINGTALK,
    FEISHU,
    ROSTER,
    WECOM,
    alarm,
    notify_config,
    robots_section,
    routes_with_robots,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)
NOW = 1_800_000_000_000

UPDATE = IncidentUpdate(
    status="raised",
    incident_id=7,
    code="4821",
    building="yg01",
    building_name="阳光花园1号楼",
    severity="fire",
    floors=(3,),
    devices=("yg01-sd-03a",),
    alert_count=1,
    opened_ms=NOW - 135_000,
    link="https://fire.example.cn/l/abc.def",
)


@pytest.fixture
async def emulators() -> AsyncIterator[tuple[WeComRobot, DingTalkRobot, FeishuBot]]:
    wecom = WeComRobot(key=WECOM["key"])
    dingtalk = DingTalkRobot(key=DINGTALK["key"], secret=DINGTALK["secret"])
    feishu = FeishuBot(key=FEISHU["key"], secret=FEISHU["secret"])
    async with wecom, dingtalk, feishu:
        yield wecom, dingtalk, feishu  # type: ignore[misc]


def robot(emulator: RobotEmulator, platform: str, **extra: str) -> RobotConfig:
    secret = {"wecom": {}, "dingtalk": {"secret": DINGTALK["secret"]}, "feishu": {"secret": FEISHU["secret"]}}
    key = {"wecom": WECOM["key"], "dingtalk": DINGTALK["key"], "feishu": FEISHU["key"]}[platform]
    data = {"name": "r", "platform": platform, "key": key, "endpoint": emulator.url, "allow_private": True}
    return RobotConfig.model_validate(data | secret[platform] | extra)


def test_render_zh_and_en() -> None:
    zh = render(UPDATE, msg_id="m1", lang="zh", now_ms=NOW)
    assert zh.title == "火警·阳光花园1号楼 3层·待确认"
    assert "2分15秒" in zh.markdown and "4821" in zh.markdown and "yg01-sd-03a" in zh.markdown
    assert "[处置](https://fire.example.cn/l/abc.def)" in zh.markdown
    en = render(UPDATE, msg_id="m1", lang="en", now_ms=NOW)
    assert en.title == "FIRE: 阳光花园1号楼 3F - awaiting acknowledgement"
    assert "2m 15s" in en.markdown and "[Respond](" in en.markdown
    done = render(
        IncidentUpdate.from_json(UPDATE.to_json().replace(b'"raised"', b'"resolved"')),
        msg_id="m",
        lang="zh",
        now_ms=NOW,
    )
    assert "已处置完毕" in done.markdown and "l/abc" not in done.markdown  # no action on a finished incident
    assert IncidentUpdate.from_json(UPDATE.to_json()) == UPDATE


def test_limiter_slides_a_minute() -> None:
    limiter = RobotLimiter()
    for i in range(20):
        assert limiter.free_at("r", limit=20, now_ms=NOW + i) == NOW + i
        limiter.record("r", now_ms=NOW + i)
    assert limiter.free_at("r", limit=20, now_ms=NOW + 100) == NOW + 60_000  # the oldest leaves the window
    assert limiter.free_at("r", limit=20, now_ms=NOW + 60_000) == NOW + 60_000


@pytest.mark.parametrize("platform", ["wecom", "dingtalk", "feishu"])
async def test_each_platform_request_verified_by_its_emulator(
    platform: str, emulators: tuple[WeComRobot, DingTalkRobot, FeishuBot]
) -> None:
    emulator: RobotEmulator = {"wecom": emulators[0], "dingtalk": emulators[1], "feishu": emulators[2]}[platform]
    config = robot(emulator, platform, mention_all="true")
    message = render(UPDATE, msg_id="m1", lang="zh", now_ms=NOW)
    async with aiohttp.ClientSession() as session:
        result = await sender_for(platform)(session, config, message)
    assert result.ok, result.error
    assert emulator.errors == []
    (sent,) = emulator.messages
    text = sent.get("content") or sent["text"]
    assert "阳光花园1号楼" in text and "4821" in text and "https://fire.example.cn/l/abc.def" in text
    if platform == "dingtalk":
        assert sent["title"] == message.title and sent["at"] == {"isAtAll": True}


@pytest.mark.parametrize("platform", ["wecom", "dingtalk", "feishu"])
async def test_wrong_credentials_refused_not_retryable_and_key_not_in_error(
    platform: str, emulators: tuple[WeComRobot, DingTalkRobot, FeishuBot]
) -> None:
    emulator: RobotEmulator = {"wecom": emulators[0], "dingtalk": emulators[1], "feishu": emulators[2]}[platform]
    wrong = {"wecom": {"key": "not-the-key"}, "dingtalk": {"secret": "SECwrong"}, "feishu": {"secret": "wrong"}}
    config = robot(emulator, platform, **wrong[platform])
    async with aiohttp.ClientSession() as session:
        result = await sender_for(platform)(session, config, render(UPDATE, msg_id="m", lang="en", now_ms=NOW))
    assert not result.ok and not result.retryable
    assert len(emulator.errors) == 1 and emulator.messages == []
    assert config.key.get_secret_value() not in (result.error or "")


@pytest.mark.parametrize("platform", ["wecom", "dingtalk", "feishu"])
async def test_rate_limit_answer_is_retryable_after_the_window(
    platform: str, emulators: tuple[WeComRobot, DingTalkRobot, FeishuBot]
) -> None:
    emulator: RobotEmulator = {"wecom": emulators[0], "dingtalk": emulators[1], "feishu": emulators[2]}[platform]
    emulator.per_min = 1
    config = robot(emulator, platform)
    message = render(UPDATE, msg_id="m", lang="zh", now_ms=NOW)
    async with aiohttp.ClientSession() as session:
        assert (await sender_for(platform)(session, config, message)).ok
        limited = await sender_for(platform)(session, config, message)
    assert limited.retryable and limited.retry_after_s == 60.0, limited
    assert emulator.throttled == 1 and emulator.errors == []
    assert {"wecom": "45009", "dingtalk": "130101", "feishu": "11232"}[platform] in (limited.error or "")


def robot_config(wecom: str, dingtalk: str, feishu: str | None = None, **extra: object) -> NotifyConfig:
    robots = robots_section(wecom=wecom, dingtalk=dingtalk, feishu=feishu)
    return notify_config(robots=robots, routes=routes_with_robots(robots), roster=ROSTER, **extra)


def robot_rows(store: AlertStore) -> list[tuple[str, str, str]]:
    return [(r.target, r.event, r.state) for r in store.outbox(channel="robot")]


def test_one_message_per_incident_update_coalesced(tmp_path: Path) -> None:
    store = AlertStore(tmp_path / "a.sqlite", notify=robot_config("http://127.0.0.1:9", "http://127.0.0.1:9"))
    store.apply([alarm(f"yg01-sd-{i:03d}") for i in range(200)], now_ms=NOW)
    # 200 detectors of one building: one incident, one waiting message per robot.
    assert sorted(robot_rows(store)) == [
        ("robot:grid-wecom", "robot.raised", "pending"),
        ("robot:station-dingtalk", "robot.raised", "pending"),
    ]
    store.apply([alarm("yg02-sd-001", building="yg02", grid="g02")], now_ms=NOW)  # grid g02: same routes
    assert len(robot_rows(store)) == 4
    drill = alarm("yg03-sd-001", building="yg03", drill=True)
    store.apply([drill, alarm("yg04-sd-001", building="yg04", test=True)], now_ms=NOW)
    assert len(robot_rows(store)) == 4  # drills and test alerts never reach a group


async def test_burst_stays_within_rate_limit_fire_first_nothing_dropped(
    tmp_path: Path, emulators: tuple[WeComRobot, DingTalkRobot, FeishuBot]
) -> None:
    wecom, dingtalk, _ = emulators
    now = [NOW]
    for emulator in (wecom, dingtalk):
        emulator.clock = lambda: now[0] / 1000
    # (No escalation within the test's two minutes: the fire's one update is its raise.)
    store = AlertStore(tmp_path / "a.sqlite", notify=robot_config(wecom.url, dingtalk.url, ack_timeout_s=3600))
    # 29 buildings with a fault and one with a fire, in one engine batch: 30 incidents, 30 messages per robot.
    faults = [
        alarm(f"b{i:02d}-sd-001", building=f"b{i:02d}", severity=Severity.TROUBLE, rule="fault") for i in range(29)
    ]
    store.apply([*faults, alarm("yg01-sd-001")], now_ms=now[0])
    notifier = Notifier(store, clock=lambda: now[0])
    task = asyncio.create_task(notifier.run())
    try:
        for emulator in (wecom, dingtalk):
            await emulator.wait_for(lambda e=emulator: len(e.messages) == 20)  # type: ignore[misc]
        await wait_until(lambda: notifier.idle)
        await asyncio.sleep(0.2)  # nothing more goes out while the window is full (a negative check)
        for emulator in (wecom, dingtalk):
            assert len(emulator.messages) == 20 and emulator.throttled == 0
            first = emulator.messages[0].get("content") or emulator.messages[0]["text"]
            assert "火警" in first and "yg01" in first
        now[0] += 60_000
        notifier.wake()
        for emulator in (wecom, dingtalk):
            await emulator.wait_for(lambda e=emulator: len(e.messages) == 30)  # type: ignore[misc]
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    for emulator in (wecom, dingtalk):
        assert emulator.errors == [] and emulator.throttled == 0
        texts = [m.get("content") or m["text"] for m in emulator.messages]
        assert "火警" in texts[0] and all("火警" not in t for t in texts[1:]), texts  # the fire went first
    assert {r.state for r in store.outbox(channel="robot")} == {"sent"}


async def test_incident_moves_each_step_is_a_message(
    tmp_path: Path, emulators: tuple[WeComRobot, DingTalkRobot, FeishuBot]
) -> None:
    wecom, dingtalk, feishu = emulators
    store = AlertStore(
        tmp_path / "a.sqlite",
        notify=robot_config(wecom.url, dingtalk.url, feishu.url),
        building_names={"yg01": "阳光花园1号楼"},
    )
    notifier = Notifier(store, clock=lambda: NOW + 40_000)
    task = asyncio.create_task(notifier.run())
    try:
        alert_id = store.apply([alarm("yg01-sd-001")], now_ms=NOW)[0].alert_id
        assert alert_id is not None

        async def each_has(n: int) -> None:
            # (Waiting for all three: an update made while a message is still waiting coalesces into it.)
            for emulator in (wecom, dingtalk, feishu):
                await emulator.wait_for(lambda e=emulator: len(e.messages) == n)  # type: ignore[misc]

        await each_has(1)
        store.acknowledge(alert_id, by="王网格", now_ms=NOW + 10_000)
        await each_has(2)
        store.dispatch(alert_id, by="王网格", to="微型消防站1", now_ms=NOW + 20_000)
        await each_has(3)
        store.resolve(alert_id, by="王网格", cause="false_alarm", now_ms=NOW + 30_000)
        await each_has(4)
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    texts = [m["content"] for m in wecom.messages]
    assert ["待确认" in texts[0], "已确认" in texts[1], "已出动" in texts[2], "已处置完毕" in texts[3]] == [True] * 4
    assert "王网格" in texts[1] and "微型消防站1" in texts[2] and "false_alarm" in texts[3]
    assert all("阳光花园1号楼" in t for t in texts)
    assert "acknowledged" in feishu.messages[1]["text"]  # the Feishu robot is configured in English
    assert wecom.errors == dingtalk.errors == feishu.errors == []


async def test_two_hundred_detectors_in_one_building_coalesce_within_the_limit(
    tmp_path: Path, emulators: tuple[WeComRobot, DingTalkRobot, FeishuBot]
) -> None:
    wecom, dingtalk, _ = emulators
    now = [NOW]
    for emulator in (wecom, dingtalk):
        emulator.clock = lambda: now[0] / 1000
    store = AlertStore(tmp_path / "a.sqlite", notify=robot_config(wecom.url, dingtalk.url, ack_timeout_s=3600))
    notifier = Notifier(store, clock=lambda: now[0])
    task = asyncio.create_task(notifier.run())
    try:
        # A smoky stairwell: a fault first, then 200 detectors in alarm, in 40 engine batches as they come.
        store.apply([alarm("yg01-sd-000", severity=Severity.TROUBLE, rule="fault")], now_ms=now[0])
        for batch in range(40):
            store.apply([alarm(f"yg01-sd-{batch * 5 + i + 1:03d}") for i in range(5)], now_ms=now[0])
            await asyncio.sleep(0.005)
        await wait_until(lambda: notifier.idle and not store.outbox(channel="robot", state="attempting"))
        sent_first_minute = {e: len(e.messages) for e in (wecom, dingtalk)}
        now[0] += 60_000
        notifier.wake()
        await wait_until(lambda: {r.state for r in store.outbox(channel="robot")} == {"sent"})
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    for emulator in (wecom, dingtalk):
        # The fault (or the fire coalesced into it) and the fire at once, then the growth at most once a minute:
        # the robot's rate is left for other buildings.
        assert 1 <= sent_first_minute[emulator] <= 2 and emulator.throttled == 0 and emulator.errors == []
        texts = [m.get("content") or m["text"] for m in emulator.messages]
        assert len(texts) == sent_first_minute[emulator] + 1
        # Nothing is lost: the last message has the whole incident, and the fire was reported as soon as it was.
        assert "201" in texts[-1] and "火警" in texts[-1]
        assert "火警" in texts[sent_first_minute[emulator] - 1]
