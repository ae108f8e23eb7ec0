"""``GET /api/v1/stream``: live alert and device events over SSE, scoped per token, resumable, bounded per client."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import create_api_app
from gateway.api.hub import Hub, ResumeGap, SubscriberLagged
from gateway.ingest.contract import registry_from_config
from rules.types import StatusChange
from testkit.api import build_runtime, config_for_tests, inject, now_ms

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
VIEWER = {"Authorization": "Bearer demo-viewer-token"}
OPERATOR = {"Authorization": "Bearer demo-operator-token"}
G01 = {"Authorization": "Bearer demo-g01-token"}


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


async def next_event(response: ClientResponse, *, skip: tuple[str, ...] = (), within: float = 5.0) -> dict[str, Any]:
    """The next SSE frame (heartbeat comments are skipped), parsed into id/event/data."""
    async with asyncio.timeout(within):
        while True:
            raw = (await response.content.readuntil(b"\n\n")).decode()
            frame: dict[str, Any] = {}
            for line in raw.splitlines():
                if not line or line.startswith(":"):
                    continue
                key, _, value = line.partition(": ")
                frame[key] = value
            if "event" in frame and frame["event"] not in skip:
                frame["data"] = orjson.loads(frame.get("data", "null"))
                return frame


async def test_alert_lifecycle_and_device_changes_stream_live(client: TestClient, runtime: Any) -> None:
    response = await client.get("/api/v1/stream", headers=VIEWER)
    assert response.status == 200 and response.content_type == "text/event-stream"
    assert (await next_event(response))["event"] == "hello"

    alert_id = next(c.alert_id for c in inject(runtime, "yg01-sd-01a", {"alarm": True}) if c.type == "alert.raised")
    raised = await next_event(response, skip=("incident",))
    assert raised["event"] == "alert" and raised["data"]["change"] == "alert.raised"
    assert raised["data"]["alert"]["id"] == alert_id and raised["data"]["alert"]["severity"] == "fire"
    assert raised["data"]["building"] == "yg01"

    assert (await client.post(f"/api/v1/alerts/{alert_id}/ack", headers=OPERATOR, json={})).status == 200
    acked = await next_event(response, skip=("incident",))
    assert acked["data"]["change"] == "alert.acknowledged" and acked["data"]["alert"]["state"] == "acknowledged"
    assert int(acked["id"]) > int(raised["id"])

    ref = registry_from_config(runtime.config)["yg02-sd-02a"]
    runtime.presence.status(StatusChange(ref=ref, ts_ms=now_ms(), online=False))
    runtime.presence.sweep(now_ms=now_ms())
    devices = [await next_event(response, skip=("incident",)) for _ in range(2)]
    assert all(d["event"] == "device" for d in devices)
    # the detector that alarmed came online (unknown -> online); the other went offline
    assert {d["data"]["id"]: d["data"]["state"] for d in devices} == {"yg01-sd-01a": "online", "yg02-sd-02a": "offline"}
    response.close()


async def test_scoped_token_gets_only_its_buildings_events(client: TestClient, runtime: Any) -> None:
    response = await client.get("/api/v1/stream", headers=G01)
    await next_event(response)  # hello
    inject(runtime, "hp02-sd-01a", {"alarm": True})  # grid g02: invisible to this token
    inject(runtime, "yg01-sd-01a", {"alarm": True})
    event = await next_event(response, skip=("incident",))
    assert event["data"]["building"] == "yg01"
    incident = await next_event(response)
    assert incident["event"] == "incident" and incident["data"]["building"] == "yg01"
    response.close()


async def test_resume_with_last_event_id(client: TestClient, runtime: Any) -> None:
    response = await client.get("/api/v1/stream", headers=VIEWER)
    await next_event(response)
    inject(runtime, "yg01-sd-01a", {"alarm": True})
    first = await next_event(response, skip=("incident",))
    response.close()
    # while disconnected: two more alerts
    inject(runtime, "yg02-sd-01a", {"alarm": True})
    inject(runtime, "yg03-sd-01a", {"alarm": True})
    again = await client.get("/api/v1/stream", headers={**VIEWER, "Last-Event-ID": first["id"]})
    await next_event(again)  # hello
    missed = [await next_event(again, skip=("incident",)) for _ in range(2)]
    assert [e["data"]["building"] for e in missed] == ["yg02", "yg03"]
    again.close()
    # an id older than the replay ring: told to reload
    runtime.hub._history.clear()
    gap = await client.get("/api/v1/stream", headers={**VIEWER, "Last-Event-ID": "1"})
    await next_event(gap)
    assert (await next_event(gap))["event"] == "reset"
    gap.close()


async def test_stream_needs_a_token(client: TestClient) -> None:
    response = await client.get("/api/v1/stream")
    assert response.status == 401 and response.content_type == "application/problem+json"
    response = await client.get("/api/v1/stream?token=demo-viewer-token")  # tokens in URLs are not accepted
    assert response.status in (400, 401)


async def test_slow_subscriber_is_cut_off_not_buffered_forever() -> None:
    hub = Hub(queue_size=10, history=100)
    slow = hub.subscribe()
    fast = hub.subscribe()
    for i in range(25):
        hub.publish("alert", {"n": i})
        if (event := await fast.get(within=1)) is not None:
            assert event.data["n"] == i
    assert slow._queue.qsize() <= 11  # bounded: 10 events and the lag marker
    received = []
    with pytest.raises(SubscriberLagged):
        while True:
            event = await slow.get(within=1)
            assert event is not None
            received.append(event.data["n"])
    assert received == list(range(10))
    assert hub.lagged == 1
    # Reconnecting with its last id: 15 events behind is more than one queue, so it is told to reload instead of
    # being handed a backlog it could not hold either.
    with pytest.raises(ResumeGap):
        hub.subscribe(last_event_id=10)
    resumed = hub.subscribe(last_event_id=20)  # a smaller gap is replayed
    assert [(await resumed.get(within=1)).data["n"] for _ in range(5)] == list(range(20, 25))  # type: ignore[union-attr]
    slow.close()
    fast.close()
    assert hub.subscriber_count == 1


async def test_publish_from_another_thread_reaches_subscribers() -> None:
    hub = Hub()
    sub = hub.subscribe()
    await asyncio.to_thread(hub.publish, "alert", {"building": "yg01"})
    event = await sub.get(within=2)
    assert event is not None and event.data == {"building": "yg01"}


async def test_events_arrive_in_id_order_from_many_threads_without_duplicates() -> None:
    hub = Hub(queue_size=5000, history=5000)
    sub = hub.subscribe()

    def burst(n: int) -> None:
        for i in range(200):
            hub.publish("alert", {"thread": n, "i": i})

    await asyncio.gather(*(asyncio.to_thread(burst, n) for n in range(4)))
    late = hub.subscribe(last_event_id=hub.last_id - 10)  # replays 10 that may also still be queued for delivery
    ids = [(await sub.get(within=2)).id for _ in range(800)]  # type: ignore[union-attr]
    assert ids == sorted(ids) and len(set(ids)) == 800
    replayed = [(await late.get(within=2)).id for _ in range(10)]  # type: ignore[union-attr]
    assert replayed == list(range(hub.last_id - 9, hub.last_id + 1))
    assert await late.get(within=0.2) is None  # nothing twice


def test_replay_ring_holds_right_sized_payloads() -> None:
    """The ring keeps ``history`` events for ``Last-Event-ID``; each must cost about its JSON, not orjson's working
    buffer (orjson 3.12+ returns it unshrunk: 16 KiB for a 1 KiB alert event, 32 MB for a full ring of 2,000 — what
    the soak saw grow)."""
    import gateway.api.hub as hub_module

    alert = {
        "id": 1,
        "key": "smoke-alarm/b00/d000",
        "rule": "smoke-alarm",
        "severity": "fire",
        "state": "raised",
        "building": "b00",
        "grid": "g01",
        "floor": 3,
        "device": "d000",
        "reason": "smoke detector in alarm (obscuration 0.2 %/m)",
        "flapping": False,
        "test": False,
        "condition_cleared": False,
        "incident_id": 7,
        "raised_ms": 1_764_489_600_000,
        "updated_ms": 1_764_489_600_000,
        **{f"{name}_by": None for name in ("acknowledged", "resolved")},
        "building_name": "Block 0, Riverside",
        "drill": False,
        "count": 1,
    }
    hub = Hub(history=200)
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(200):
            hub.publish("alert", {"change": "alert.raised", "ts_ms": i, "building": "b00", "alert": {**alert, "id": i}})
        after = tracemalloc.take_snapshot()
    finally:
        if not was_tracing:
            tracemalloc.stop()
    only_hub = [tracemalloc.Filter(True, hub_module.__file__)]
    held = sum(
        s.size_diff for s in after.filter_traces(only_hub).compare_to(before.filter_traces(only_hub), "filename")
    )
    payload = sum(len(event.payload) for event in hub._history)
    assert len(hub._history) == 200 and 300 < payload / 200 < 2000
    assert held < 2 * payload, f"{held / 200:.0f} bytes held per event for {payload / 200:.0f} bytes of JSON"
