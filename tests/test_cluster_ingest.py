"""Cluster mode's intake against a real three-node NATS cluster (docs/cluster.md, "Partition sessions").

``PartitionIngest`` opens one persistent MQTT 3.1.1 session per owned partition (``<prefix>-p<NN>`` on
``fgp/<NN>/+/+/+``) and hands each message on with the device's own topic; ``UnmappedCatchAll`` re-publishes what
escaped the broker's mapping into its partition.  Devices are paho clients publishing QoS 1 from all three nodes.
Every wait polls a condition with a deadline; the only bounded waits for an absence are marked as such.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.config import MqttConfig, load_config
from gateway.ingest.contract import Decoder, policy_from_config, registry_from_config
from gateway.ingest.dedup import Dedup
from gateway.ingest.mqtt import Incoming
from gateway.ingest.partitions import (
    WRONG_PARTITION,
    PartitionIngest,
    partition_filter,
    partition_lane,
    session_client_id,
)
from gateway.ingest.partitions import partition_of as gateway_partition_of
from gateway.ingest.pipeline import Pipeline
from gateway.ingest.unmapped import UNMAPPED_CLIENT_ID, UnmappedCatchAll
from gateway.metrics import Metrics
from gateway.service.service import Service
from testkit.gateway import write_config
from testkit.nats import NatsCluster, NatsNode, partition_of, store_unmapped
from testkit.services import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PARTITIONS = 16
ACK_WAIT_S = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    cluster = NatsCluster(
        tmp_path_factory.mktemp("nats"), size=3, partitions=PARTITIONS, mqtt_ack_wait=f"{ACK_WAIT_S:g}s"
    )
    cluster.start()
    # The account's $MQTT_* streams are created by its first MQTT connection.
    first = Device(cluster.nodes[0], "ingest-bootstrap")
    first.close()
    cluster.stream_leader(timeout=30)
    try:
        yield cluster
    finally:
        cluster.stop()


class Device:
    """A device: paho MQTT 3.1.1, QoS 1, waits for its CONNACK and for every PUBACK."""

    def __init__(self, node: NatsNode, client_id: str) -> None:
        self.connected = threading.Event()
        self.paho = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.paho.on_connect = lambda *args: self.connected.set()
        self.paho.connect("127.0.0.1", node.mqtt_port, keepalive=30)
        self.paho.loop_start()
        assert self.connected.wait(15), f"{client_id}: no CONNACK from {node.name}"

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(15)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


async def until(predicate: Callable[[], bool], *, within_s: float, what: str) -> float:
    """Poll ``predicate`` (on the event loop, so the sessions keep reading) until it holds; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < within_s:
        if predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    pytest.fail(f"timed out after {within_s}s waiting for {what}")


async def consumers_ready(cluster: NatsCluster, *topic_filters: str) -> None:
    """Devices publish only once every replica knows the subscriptions' consumers (docs/cluster.md, finding 7)."""
    await until(lambda: cluster.consumers_everywhere(*topic_filters), within_s=30, what=f"consumers of {topic_filters}")


def mqtt_config(cluster: NatsCluster) -> MqttConfig:
    return MqttConfig(url=cluster.nodes[0].mqtt_url, protocol="v311", keepalive_s=10)


def buildings_in(partition: int, count: int, *, prefix: str, partitions: int = PARTITIONS) -> list[str]:
    out: list[str] = []
    i = 0
    while len(out) < count:
        name = f"{prefix}-{i}"
        if partition_of(name, partitions) == partition:
            out.append(name)
        i += 1
    return out


def connections(cluster: NatsCluster, client_id: str) -> int:
    return sum(
        len(node.monitor("/connz?subs=false&mqtt_client=" + client_id).get("connections") or [])
        for node in cluster.running_nodes()
    )


class Inbox:
    """What a ``PartitionIngest`` handed on, and a way to acknowledge it as the pipeline would."""

    def __init__(self) -> None:
        self.messages: list[Incoming] = []
        self.acked = 0  # messages[:acked] have been acknowledged (a mid is acknowledged once: the broker reuses them)

    def __call__(self, message: Incoming) -> None:
        self.messages.append(message)

    def payloads(self) -> list[str]:
        return [m.payload.decode() for m in self.messages]

    def ack_all(self, ingest: PartitionIngest, *, keep: Callable[[Incoming], bool] = lambda m: False) -> int:
        """Acknowledge what came since the last call, but for ``keep``'s messages (never acknowledged)."""
        by_lane: dict[int, list[tuple[int, int]]] = {}
        for m in self.messages[self.acked :]:
            if not keep(m):
                by_lane.setdefault(m.lane, []).append((m.generation, m.mid))
        self.acked = len(self.messages)
        return ingest.ack(by_lane)


def test_the_gateway_computes_the_brokers_partition() -> None:
    """The gateway's own partition_of (a copy until common/partitions.py exists) is the one the spike checked
    against the running server."""
    for i in range(500):
        assert gateway_partition_of(f"b-{i}", PARTITIONS) == partition_of(f"b-{i}", PARTITIONS)
        assert gateway_partition_of(f"b-{i}", 256) == partition_of(f"b-{i}", 256)


async def test_open_partitions_get_their_buildings_once_with_the_device_topic(cluster: NatsCluster) -> None:
    """Six of sixteen partitions open on one gateway (whose first broker URL is a dead node: it moves on to the
    next); three devices, one per node, publish for 48 buildings: each message of an open partition arrives once,
    with the device's own topic and its partition's lane, and nothing of the others.  Then two partitions are closed
    and the devices publish again: nothing of those two arrives, the other four get theirs."""
    metrics = Metrics()
    inbox = Inbox()
    ingest = PartitionIngest(
        config=mqtt_config(cluster),
        partitions=PARTITIONS,
        client_prefix="gw-a",
        metrics=metrics,
        on_message=inbox,
        urls=[f"mqtt://127.0.0.1:{free_port()}", *cluster.mqtt_urls],
        backoff_max_s=0.5,
    )
    opened = [0, 3, 5, 8, 12, 15]
    for p in opened:
        await ingest.open(p)
    assert ingest.open_partitions == opened
    assert metrics.partition_sessions._value.get() == len(opened)
    await consumers_ready(cluster, *(partition_filter(p) for p in opened))
    for p in opened:
        assert connections(cluster, session_client_id("gw-a", p)) == 1

    buildings = [f"bldg-{i:02d}" for i in range(48)]
    assert {partition_of(b, PARTITIONS) for b in buildings} - set(opened), "some buildings in closed partitions"
    devices = [Device(node, f"ingest-dev-{node.name}") for node in cluster.nodes]

    async def publish_round(tag: str, open_now: list[int]) -> dict[str, int]:
        """Every device publishes once for every building; the topics an open partition must deliver."""
        expected: dict[str, int] = {}

        def publish_everything() -> None:
            for b in buildings:
                for i, device in enumerate(devices):
                    topic = f"firegrid/{b}/d{i}/telemetry"
                    device.publish(topic, f"{tag}:{b}/d{i}".encode())
                    if partition_of(b, PARTITIONS) in open_now:
                        expected[topic] = partition_of(b, PARTITIONS)

        await asyncio.to_thread(publish_everything)
        return expected

    async def check_round(tag: str, expected: dict[str, int]) -> None:
        got = lambda: [m for m in inbox.messages if m.payload.decode().startswith(f"{tag}:")]  # noqa: E731
        await until(lambda: len(got()) >= len(expected), within_s=30, what=f"{len(expected)} messages of {tag}")
        topics = [m.topic for m in got()]
        assert len(topics) == len(set(topics)), "a message arrived twice"
        assert set(topics) == set(expected), "exactly the open partitions' messages, under the device's own topic"
        for m in got():
            assert m.lane == partition_lane(expected[m.topic])
            assert m.payload.decode() == f"{tag}:" + m.topic.split("/", 1)[1].rsplit("/", 1)[0]

    try:
        expected = await publish_round("one", opened)
        await check_round("one", expected)
        # partition 3's commit "has not happened" when it is closed: its messages stay unacknowledged
        unacked = [m for m in inbox.messages if m.lane == partition_lane(3)]
        assert unacked
        assert inbox.ack_all(ingest, keep=lambda m: m.lane == partition_lane(3)) == len(expected) - len(unacked)
        for p in opened:
            if p != 3:
                await until(lambda p=p: cluster.ack_pending(partition_filter(p)) == 0, within_s=10, what="the PUBACKs")

        closed = [3, 12]
        for p in closed:
            await ingest.close(p)
        still = [p for p in opened if p not in closed]
        assert ingest.open_partitions == still
        later = await publish_round("two", still)
        await check_round("two", later)
        assert len(inbox.messages) == len(expected) + len(later)
        # the late commit of partition 3's messages: their acknowledgements are dropped with the closed session
        late = {partition_lane(3): [(m.generation, m.mid) for m in unacked]}
        assert ingest.ack(late) == 0
        assert inbox.ack_all(ingest) == len(later)
    finally:
        for device in devices:
            device.close()
        await ingest.close_all()
    assert ingest.open_partitions == []
    assert metrics.partition_sessions._value.get() == 0
    print(f"{len(expected)} then {len(later)} messages of {len(opened)} then {len(still)} open partitions, each once")


async def test_a_new_owner_gets_every_unacknowledged_message(cluster: NatsCluster) -> None:
    """Gateway A receives ten messages and closes the partition without acknowledging them (its group commit never
    happened); five more are published; gateway B opens the same partition: the queued five come at once, the ten
    that were in flight at A within one ack_wait, each under the device's own topic."""
    partition = 6
    building = buildings_in(partition, 1, prefix="handover")[0]
    config = mqtt_config(cluster)
    first, second = Inbox(), Inbox()
    a = PartitionIngest(
        config=config, partitions=PARTITIONS, client_prefix="gw-h", metrics=Metrics(), on_message=first,
        urls=cluster.mqtt_urls,
    )  # fmt: skip
    await a.open(partition)
    await consumers_ready(cluster, partition_filter(partition))
    device = Device(cluster.nodes[2], "handover-dev")
    try:
        inflight = [f"seq{n:02d}" for n in range(10)]
        for payload in inflight:
            await asyncio.to_thread(device.publish, f"firegrid/{building}/dev/telemetry", payload.encode())
        await until(lambda: len(first.messages) >= 10, within_s=15, what="A to receive the first ten")
        await a.close(partition)  # no PUBACK for any of them
        await until(
            lambda: connections(cluster, session_client_id("gw-h", partition)) == 0, within_s=10, what="A's DISCONNECT"
        )
        queued = [f"seq{n:02d}" for n in range(10, 15)]
        for payload in queued:
            await asyncio.to_thread(device.publish, f"firegrid/{building}/dev/telemetry", payload.encode())

        b = PartitionIngest(
            config=config.model_copy(update={"url": cluster.nodes[1].mqtt_url}), partitions=PARTITIONS,
            client_prefix="gw-h", metrics=Metrics(), on_message=second,
            urls=[cluster.nodes[1].mqtt_url, cluster.nodes[0].mqtt_url],
        )  # fmt: skip
        opened_at = time.monotonic()
        await b.open(partition)
        queued_s = await until(
            lambda: set(queued) <= set(second.payloads()), within_s=ACK_WAIT_S + 10, what="the queued messages"
        )
        all_s = await until(
            lambda: set(inflight + queued) <= set(second.payloads()),
            within_s=ACK_WAIT_S * 3 + 10,
            what="the messages in flight at A",
        )
        assert {m.topic for m in second.messages} == {f"firegrid/{building}/dev/telemetry"}
        assert all_s <= ACK_WAIT_S + 3, f"the in-flight messages took {all_s:.2f}s, well past ack_wait"
        second.ack_all(b)
        await until(lambda: cluster.ack_pending(partition_filter(partition)) == 0, within_s=10, what="B's PUBACKs")
        await b.close(partition)
        print(
            f"new owner: queued messages {queued_s:.2f}s, the in-flight ones by {all_s:.2f}s after open "
            f"({time.monotonic() - opened_at:.2f}s in all; ack_wait {ACK_WAIT_S:g}s)"
        )
    finally:
        device.close()


async def test_a_closed_session_never_reconnects_and_a_lost_one_only_while_owned(cluster: NatsCluster) -> None:
    """``close`` leaves no connection behind, and none comes back.  A session that loses its connection (here: taken
    over by a new owner) reconnects only while ``owns`` still says so: otherwise the two would take the session from
    each other (docs/cluster.md, finding 8)."""
    partition = 9
    client_id = session_client_id("gw-r", partition)
    owned = {partition: True}
    a = PartitionIngest(
        config=mqtt_config(cluster), partitions=PARTITIONS, client_prefix="gw-r", metrics=Metrics(),
        on_message=Inbox(), urls=cluster.mqtt_urls, owns=lambda p: owned[p], backoff_max_s=0.5,
    )  # fmt: skip
    await a.open(partition)
    await a.close(partition)
    assert not a.is_open(partition)
    await until(lambda: connections(cluster, client_id) == 0, within_s=10, what="the DISCONNECT to be seen")
    # A bounded wait for an absence: a reconnect would come within 0.05 s (the supervisor's first retry).
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert connections(cluster, client_id) == 0, "a closed partition's session came back"
        await asyncio.sleep(0.1)

    await a.open(partition)
    first_session = a.session(partition)
    assert first_session is not None and first_session.connections == 1
    # reopened in the same process: an acknowledgement meant for the first session's message ids goes nowhere
    assert first_session.generation > 0
    assert a.ack({partition_lane(partition): [(0, 1)]}) == 0
    owned[partition] = False  # A's lease has moved on
    b = PartitionIngest(
        config=mqtt_config(cluster), partitions=PARTITIONS, client_prefix="gw-r", metrics=Metrics(),
        on_message=Inbox(), urls=list(reversed(cluster.mqtt_urls)),
    )  # fmt: skip
    await b.open(partition)  # takes the session over: the broker closes A's connection
    await until(lambda: not a.is_open(partition), within_s=10, what="A to give the session up")
    assert a.ended[partition] == 1
    assert first_session.connections == 1, "A reconnected after losing its lease"
    deadline = time.monotonic() + 1.5  # again a bounded wait for an absence: B keeps the session
    while time.monotonic() < deadline:
        session = b.session(partition)
        assert session is not None and session.connected and session.connections == 1
        await asyncio.sleep(0.1)
    assert connections(cluster, client_id) == 1
    await b.close(partition)


async def test_an_escaped_publish_reaches_its_partition_through_the_catch_all(cluster: NatsCluster) -> None:
    """A publish that escaped the mapping (stored under the device's own topic, as the server does with a first
    PUBLISH sent before the CONNACK: created here directly, since the race cannot be provoked on demand) reaches
    its partition's owner once, through ``firegrid-unmapped``, and is acknowledged only after the PUBACK of its
    copy."""
    partition = 2
    building = buildings_in(partition, 1, prefix="escape")[0]
    topic = f"firegrid/{building}/d7/telemetry"
    owner_inbox = Inbox()
    owner = PartitionIngest(
        config=mqtt_config(cluster), partitions=PARTITIONS, client_prefix="gw-e", metrics=Metrics(),
        on_message=owner_inbox, urls=cluster.mqtt_urls,
    )  # fmt: skip
    await owner.open(partition)
    metrics = Metrics()
    release = asyncio.Event()
    held: list[str] = []
    events: list[tuple[str, float]] = []
    catch_all = UnmappedCatchAll(config=mqtt_config(cluster), metrics=metrics, urls=cluster.mqtt_urls)
    real_publish = catch_all._republisher.publish

    async def publish(copy_topic: str, payload: bytes, retain: bool) -> None:
        held.append(copy_topic)
        await release.wait()  # the test holds the copy back, to look at the original meanwhile
        await real_publish(copy_topic, payload, retain)
        events.append(("puback", time.monotonic()))

    catch_all._publish = publish
    await catch_all.open()
    session = catch_all.session
    assert session is not None and session.config.client_id == UNMAPPED_CLIENT_ID
    real_ack = session.ack

    def ack(items: list[tuple[int, int]]) -> int:
        events.append(("ack", time.monotonic()))
        return real_ack(items)

    session.ack = ack  # type: ignore[method-assign]
    await consumers_ready(cluster, partition_filter(partition), catch_all.topic_filter)
    try:
        seq = await asyncio.to_thread(store_unmapped, cluster.nodes[0], topic, b'{"escaped": 1}')
        assert seq > 0
        await until(lambda: held == [topic], within_s=10, what="the catch-all to receive the escape")
        assert cluster.ack_pending(catch_all.topic_filter) == 1, "the original is unacknowledged while its copy waits"
        assert owner_inbox.messages == []
        release.set()
        await until(lambda: len(owner_inbox.messages) == 1, within_s=15, what="the copy at the partition's owner")
        copy = owner_inbox.messages[0]
        assert copy.topic == topic and copy.payload == b'{"escaped": 1}' and copy.lane == partition_lane(partition)
        assert owner_inbox.ack_all(owner) == 1
        await until(lambda: catch_all.acknowledged == 1, within_s=10, what="the original's PUBACK")
        assert [kind for kind, _ in events] == ["puback", "ack"], "acknowledged only after the copy's PUBACK"
        await until(lambda: cluster.ack_pending(catch_all.topic_filter) == 0, within_s=10, what="the broker to see it")
        assert metrics.unmapped._value.get() == 1
        assert "firegrid_unmapped_total 1.0" in metrics.render().decode()
        # A bounded wait for an absence: acknowledged, the escape is not delivered (or copied) a second time.
        deadline = time.monotonic() + ACK_WAIT_S * 1.5
        while time.monotonic() < deadline:
            assert len(owner_inbox.messages) == 1 and held == [topic]
            await asyncio.sleep(0.1)
    finally:
        await catch_all.close()
        await owner.close_all()
    assert not catch_all.is_open


async def test_a_building_of_another_partition_is_refused_and_acknowledged(cluster: NatsCluster) -> None:
    """A gateway configured with P = 13 against a broker mapping into 16: a building the broker puts in partition 4
    but whose partition of 13 is not 4 is refused (counted as ``wrong_partition``) and acknowledged, not handed on;
    one that both agree on passes."""
    partition, wrong_p = 4, 13
    candidates = buildings_in(partition, 40, prefix="wp")
    refused = next(b for b in candidates if partition_of(b, wrong_p) != partition)
    passed = next(b for b in candidates if partition_of(b, wrong_p) == partition)
    metrics = Metrics()
    inbox = Inbox()
    ingest = PartitionIngest(
        config=mqtt_config(cluster), partitions=wrong_p, client_prefix="gw-w", metrics=metrics, on_message=inbox,
        urls=cluster.mqtt_urls,
    )  # fmt: skip
    await ingest.open(partition)
    await consumers_ready(cluster, partition_filter(partition))
    device = Device(cluster.nodes[1], "wrong-partition-dev")
    try:
        await asyncio.to_thread(device.publish, f"firegrid/{refused}/d1/telemetry", b"refused")
        await asyncio.to_thread(device.publish, f"firegrid/{passed}/d1/telemetry", b"passed")
    finally:
        device.close()
    await until(lambda: inbox.payloads() == ["passed"], within_s=15, what="the message both agree on")
    await until(lambda: ingest.rejected[partition] == 1, within_s=10, what="the refusal")
    assert inbox.messages[0].topic == f"firegrid/{passed}/d1/telemetry"
    assert f'firegrid_rejections_total{{reason="{WRONG_PARTITION}"}} 1.0' in metrics.render().decode()
    inbox.ack_all(ingest)
    # the refused one was acknowledged at once: nothing stays pending for a redelivery
    await until(lambda: cluster.ack_pending(partition_filter(partition)) == 0, within_s=10, what="both PUBACKs")
    await ingest.close(partition)


async def test_partition_messages_go_through_the_pipeline_and_are_acknowledged_after_the_commit(
    cluster: NatsCluster, tmp_path: Path
) -> None:
    """The real ``Pipeline`` (decoder, dedup, engine, SQLite store; built from a ``Service``'s parts, the service
    itself not run) fed by partition sessions: while the group commit is held, the broker counts every message as
    unacknowledged; once it is done, the pipeline's acknowledgements reach the right sessions."""
    path, _ = write_config(tmp_path, mqtt_url=cluster.nodes[0].mqtt_url, influx_url=None, devices=20, buildings=10)
    service = Service(load_config(path))
    config = service.config
    sent_acks: list[int] = []
    hold = threading.Event()
    commits: list[int] = []
    ingest: PartitionIngest | None = None

    def ack_lanes(acks: dict[int, list[tuple[int, int]]]) -> int:
        assert ingest is not None
        sent = ingest.ack(acks)
        sent_acks.append(sent)
        return sent

    pipeline = Pipeline(
        decoder=Decoder(
            prefix=config.mqtt.topic_prefix, registry=registry_from_config(config), policy=policy_from_config(config)
        ),
        dedup=Dedup(window_ms=config.contract.replay_window_s * 1000),
        rejections=service.rejections,
        presence=service.presence,
        metrics=service.metrics,
        engine=service.engine,
        engine_lock=service.runtime.engine_lock,
        alert_store=service.store,
        engine_state=service.engine_state,
        spool=None,
        on_committed=lambda job: None,
        ack=lambda items: 0,
        ack_lanes=ack_lanes,
    )  # fmt: skip
    real_commit = pipeline._commit_sync

    def held_commit(job: object) -> None:
        assert hold.wait(30), "the test never released the commit"
        real_commit(job)  # type: ignore[arg-type]
        commits.append(1)

    pipeline._commit_sync = held_commit  # type: ignore[method-assign]
    ingest = PartitionIngest(
        config=config.mqtt.model_copy(update={"protocol": "v311"}), partitions=PARTITIONS, client_prefix="gw-pipe",
        metrics=service.metrics, on_message=pipeline.submit, urls=cluster.mqtt_urls,
    )  # fmt: skip
    # write_config's buildings b00..b09, devices d000.. with building b{d % 10}
    used = sorted({partition_of(f"b{b:02d}", PARTITIONS) for b in range(10)})
    for p in used:
        await ingest.open(p)
    await consumers_ready(cluster, *(partition_filter(p) for p in used))
    # other tests' sessions on these partitions (persistent, disconnected) may hold unacknowledged messages too
    pending = lambda: sum(cluster.ack_pending(partition_filter(p)) for p in used)  # noqa: E731
    base = pending()
    runner = asyncio.create_task(pipeline.run())
    device = Device(cluster.nodes[2], "pipeline-dev")
    now = int(time.time() * 1000)
    sent = [
        (f"firegrid/b{d % 10:02d}/d{d:03d}/telemetry", json.dumps({"ts": now + d, "seq": 1, "alarm": False}))
        for d in range(20)
    ]
    try:
        for topic, payload in sent:
            await asyncio.to_thread(device.publish, topic, payload.encode())
        await until(
            lambda: pending() == base + len(sent), within_s=10, what="every message delivered and unacknowledged"
        )
        assert sent_acks == [] and not commits
        hold.set()  # within ack_wait: the messages were delivered a moment ago
        await until(lambda: pending() == base, within_s=15, what="the broker to see every PUBACK")
        assert commits, "acknowledged before any commit was done"
        assert sum(sent_acks) >= len(sent)
        assert service.metrics.readings._value.get() == len(sent)
        # a redelivery (the machine slower than ack_wait) would be a duplicate, nothing else
        assert set(pipeline.rejections.counts) <= {"duplicate"}
    finally:
        hold.set()
        device.close()
        pipeline.stop()
        await asyncio.wait_for(runner, 15)
        await ingest.close_all()
        await service.close()
