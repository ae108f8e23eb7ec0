"""The outbox hand-off: the store hands the notifier the rows a transaction committed, and the notifier starts them
without a database round of its own; a rolled-back transaction hands nothing; a row heard of both ways (hand-off and
round) goes out once; the fence hook rolls a write back.  Real aiohttp receivers, a real SQLite file and a real
PostgreSQL database (each test runs on both)."""

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


def store_for(target: str | Path, hook: WebhookReceiver) -> AlertStore:
    return AlertStore(target, notify=notify_config(webhook_url=hook.endpoint))


async def test_a_committed_row_is_sent_while_the_notifiers_database_thread_is_blocked(
    store_target: str | Path, hook: WebhookReceiver
) -> None:
    store = store_for(store_target, hook)
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


async def test_a_rolled_back_transaction_hands_nothing_and_sends_nothing(
    store_target: str | Path, hook: WebhookReceiver
) -> None:
    store = store_for(store_target, hook)
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


def test_the_engine_snapshots_commit_in_the_alert_stores_transaction(store_target: str | Path, tmp_path: Path) -> None:
    from gateway.ingest.pipeline import EngineState

    store = AlertStore(store_target, notify=notify_config(webhook_url="http://127.0.0.1:9/hook"))
    handed: list[OutboxItem] = []
    store.add_outbox_listener(handed.extend)
    if isinstance(store_target, str):
        state = EngineState(tmp_path / "local.sqlite", url=store_target)
    else:
        state = EngineState(store_target)

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
    store_target: str | Path, hook: WebhookReceiver
) -> None:
    # Two workers: one request at a time per endpoint.  The first request is held until the fire and a later
    # warning are committed (then answered 599, retried).
    store = AlertStore(store_target, notify=notify_config(webhook_url=hook.endpoint, workers=2))
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


class Fenced(Exception):
    pass


def test_a_raising_fence_rolls_back_the_apply_with_its_outbox_rows(store_target: str | Path) -> None:
    """The fence runs inside every write transaction, right after it began; when it raises, nothing of the
    transaction is written, no outbox row reaches a listener, and the exception reaches the caller."""
    store = AlertStore(store_target, notify=notify_config(webhook_url="http://127.0.0.1:9/hook"))
    handed: list[OutboxItem] = []
    store.add_outbox_listener(handed.extend)
    seen: list[int] = []

    def fence(cur: object) -> None:
        # Inside the transaction: the cursor reads the store (a lease check reads its lease row the same way).
        seen.append(int(cur.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]))  # type: ignore[attr-defined]
        if len(seen) == 1:
            raise Fenced("lease lost")

    store.set_fence(fence)
    with pytest.raises(Fenced):
        store.apply([alarm("yg01-sd-03a")], now_ms=1)
    assert store.active_alerts() == [] and store.outbox() == [] and handed == []
    # The next write passes the fence and commits as usual; the fence saw the store before it.
    store.apply([alarm("yg01-sd-03a")], now_ms=2)
    assert seen == [0, 0] and len(store.active_alerts()) == 1
    assert handed and sorted(i.id for i in handed) == sorted(r.id for r in store.outbox())
    # A raising fence stops an operator's step too, and leaves the connection usable.
    alert_id = store.active_alerts()[0].id
    store.set_fence(lambda cur: (_ for _ in ()).throw(Fenced("lease lost")))
    with pytest.raises(Fenced):
        store.acknowledge(alert_id, by="x", now_ms=3)
    store.set_fence(None)
    assert store.get_alert(alert_id).state == "raised"  # type: ignore[union-attr]
    store.acknowledge(alert_id, by="x", now_ms=4)
    assert store.get_alert(alert_id).state == "acknowledged"  # type: ignore[union-attr]
    store.close()


def test_concurrent_writers_hand_over_their_own_rows_even_when_they_commit_out_of_order(pg_url: str) -> None:
    """Two gateways on one PostgreSQL store: the transaction that inserted the lower outbox ids commits last.
    Each hands over exactly the rows it inserted (a "every id above the last one seen" hand-off would give the
    later committer the other's rows, or skip its own)."""
    notify = notify_config(webhook_url="http://127.0.0.1:9/hook")
    first, second = AlertStore(pg_url, notify=notify), AlertStore(pg_url, notify=notify)
    handed: dict[str, list[OutboxItem]] = {"first": [], "second": []}
    first.add_outbox_listener(handed["first"].extend)
    second.add_outbox_listener(handed["second"].extend)
    inserted, go_on = threading.Event(), threading.Event()

    def hold(cur: object) -> None:
        inserted.set()  # this transaction's outbox rows exist (uncommitted) with the lower ids
        assert go_on.wait(10)

    worker = threading.Thread(target=first.apply, args=([alarm("yg01-sd-03a")],), kwargs={"now_ms": 1, "also": hold})
    worker.start()
    try:
        assert inserted.wait(10)
        second.apply([alarm("yg02-sd-01", building="yg02")], now_ms=1)  # higher ids, committed first
    finally:
        go_on.set()
        worker.join(10)
    building_of = {i.id: i.building for i in first.list_incidents()}
    rows = first.outbox()
    mine = {r.id for r in rows if building_of[r.incident_id] == "yg01"}  # type: ignore[index]
    theirs = {r.id for r in rows} - mine
    assert mine and theirs and max(mine) < min(theirs)  # the first writer took the lower ids
    assert {i.id for i in handed["first"]} == mine
    assert {i.id for i in handed["second"]} == theirs
    # Each row names its building: a cluster gateway drains its own buildings' rows only.
    assert {i.id for i in first.due(now_ms=10, buildings=["yg01"])} == mine
    assert {i.id for i in first.due(now_ms=10, channel="webhook", buildings=["yg02"])} == theirs
    assert first.due(now_ms=10, buildings=[]) == [] and first.next_due_ms(buildings=["yg03"]) is None
    assert first.next_due_ms(buildings=["yg02"]) == 1
    first.close()
    second.close()
