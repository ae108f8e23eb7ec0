"""The outbox hand-off: the store hands the notifier the rows a transaction committed, and the notifier starts them
without a database round of its own; a rolled-back transaction hands nothing; a row heard of both ways (hand-off and
round) goes out once.  Real aiohttp receivers, a real SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from alerts.delivery import Notifier
from alerts.records import OutboxItem
from alerts.store import AlertStore
from rules.types import Severity
from testkit.emulators.scenario import WEBHOOK_SECRET, alarm, notify_config, wait_until
from testkit.emulators.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.timeout(60)

NEVER = 3600.0  # the notifier's longest sleep between rounds: no round comes on its own within a test


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver(WEBHOOK_SECRET) as receiver:
        yield receiver  # type: ignore[misc]


@contextlib.asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[None]:
    task = asyncio.create_task(notifier.run())
    try:
        await wait_until(lambda: notifier.ready and notifier.idle)
        yield
    finally:
        notifier.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def store_for(tmp_path: Path, hook: WebhookReceiver) -> AlertStore:
    return AlertStore(tmp_path / "alerts.sqlite", notify=notify_config(webhook_url=hook.endpoint))


async def test_a_committed_row_is_sent_while_the_notifiers_database_thread_is_blocked(
    tmp_path: Path, hook: WebhookReceiver
) -> None:
    store = store_for(tmp_path, hook)
    notifier = Notifier(store, poll_s=NEVER)
    gate = threading.Event()
    async with running(notifier):
        # Every query the notifier makes runs on its one database thread: hold that thread, so that only the
        # hand-off can bring the new rows to a worker.
        assert notifier._db is not None
        blocked = notifier._db.submit(gate.wait, 30)
        try:
            # From a thread, as the gateway's group commit calls it.
            await asyncio.to_thread(store.apply, [alarm("yg01-sd-03a")], now_ms=notifier.clock())
            await hook.wait_for(lambda: {"alert.raised", "incident.opened"} <= {d.body["type"] for d in hook.accepted})
            assert not blocked.done()  # delivered with no database round in between
        finally:
            gate.set()
        await wait_until(lambda: notifier.idle and not store.outbox(state="pending"))
    rows = store.outbox()
    assert {r.event for r in rows} == {"alert.raised", "incident.opened"}
    assert {r.state for r in rows} == {"sent"}  # the outcomes were recorded once the thread was free
    assert notifier.stats["started_on_commit"] == len(rows)
    assert sorted(hook.accepted_ids()) == sorted(r.msg_id for r in rows)  # each once: the round skipped them
    assert hook.errors == []
    store.close()


async def test_a_rolled_back_transaction_hands_nothing_and_sends_nothing(tmp_path: Path, hook: WebhookReceiver) -> None:
    store = store_for(tmp_path, hook)
    handed: list[OutboxItem] = []

    def listen(items: Sequence[OutboxItem]) -> None:
        handed.extend(items)

    store.add_outbox_listener(listen)
    notifier = Notifier(store, poll_s=NEVER)
    async with running(notifier):
        # The first transition queues its pages inside the transaction; the second cannot be stored (its value is
        # not JSON), so the whole batch rolls back.
        bad = alarm("yg01-sd-04b", value=object())
        with pytest.raises(TypeError):
            await asyncio.to_thread(store.apply, [alarm("yg01-sd-03a"), bad], now_ms=notifier.clock())
        assert handed == [] and store.outbox() == [] and store.active_alerts() == []
        # The next commit reuses the rolled-back rows' ids: only what it really committed is handed over and sent.
        await asyncio.to_thread(store.apply, [alarm("yg01-sd-05c")], now_ms=notifier.clock())
        await wait_until(lambda: notifier.idle and len(store.outbox(state="sent")) == 2)
    rows = store.outbox()
    assert {r.state for r in rows} == {"sent"} and len(rows) == 2
    assert sorted(i.id for i in handed) == sorted(r.id for r in rows)
    sent_devices = {d.body["data"].get("device") for d in hook.of_type("alert.raised")}
    assert sent_devices == {"yg01-sd-05c"}
    assert not any("yg01-sd-03a" in str(d.body) for d in hook.attempts)
    assert sorted(hook.accepted_ids()) == sorted(r.msg_id for r in rows)
    store.close()


def test_the_engine_snapshots_commit_in_the_alert_stores_transaction(tmp_path: Path) -> None:
    from gateway.ingest.pipeline import EngineState

    path = tmp_path / "alerts.sqlite"
    store = AlertStore(path, notify=notify_config(webhook_url="http://127.0.0.1:9/hook"))
    handed: list[OutboxItem] = []
    store.add_outbox_listener(handed.extend)
    state = EngineState(path)

    def broken(cur: object) -> None:
        EngineState.write(cur, {"yg01": b"v2"}, at_ms=2)  # type: ignore[arg-type]
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        store.apply([alarm("yg01-sd-03a")], now_ms=1, also=broken)
    assert store.active_alerts() == [] and store.outbox() == [] and handed == [] and state.load() == {}
    store.apply([alarm("yg01-sd-03a")], now_ms=1, also=lambda cur: EngineState.write(cur, {"yg01": b"v1"}, at_ms=1))
    assert state.load() == {"yg01": b"v1"} and len(store.active_alerts()) == 1
    assert sorted(i.id for i in handed) == sorted(r.id for r in store.outbox())
    # Snapshots alone (no transition in the group commit) still commit.
    store.apply([], now_ms=2, also=lambda cur: EngineState.write(cur, {"yg02": b"s"}, at_ms=2))
    assert state.load() == {"yg01": b"v1", "yg02": b"s"}
    state.close()
    store.close()


async def test_a_handed_over_row_never_overtakes_a_fire_waiting_for_its_endpoint(
    tmp_path: Path, hook: WebhookReceiver
) -> None:
    # Two workers: one request at a time per endpoint.  The first request is held until the fire and a later
    # warning are committed (then answered 599, retried).
    store = AlertStore(tmp_path / "alerts.sqlite", notify=notify_config(webhook_url=hook.endpoint, workers=2))
    notifier = Notifier(store, poll_s=NEVER)
    release = asyncio.Event()
    hook.script = [("hold", release)]
    async with running(notifier):
        warning = alarm("yg02-hd-01", building="yg02", severity=Severity.WARNING, rule="heat_rise")
        await asyncio.to_thread(store.apply, [warning], now_ms=notifier.clock())
        await hook.wait_for(lambda: hook.requests >= 1, within=5)  # the endpoint is full now
        await asyncio.to_thread(store.apply, [alarm("yg01-sd-03a")], now_ms=notifier.clock())
        later = alarm("yg03-hd-01", building="yg03", severity=Severity.WARNING, rule="heat_rise")
        await asyncio.to_thread(store.apply, [later], now_ms=notifier.clock())
        release.set()
        await wait_until(lambda: notifier.idle and not store.outbox(state="pending"))
    order = [d.body["data"]["severity"] for d in hook.accepted]
    fire_rows = len(store.outbox(state="sent")) - order.count("warning")
    assert fire_rows == 2 and order[:2] == ["fire", "fire"], order  # the fire's rows first once the endpoint freed
    assert sorted(hook.accepted_ids()) == sorted(r.msg_id for r in store.outbox())  # each once
    store.close()
