"""The cluster acceptance harness's own parts (testkit/cluster.py), checked against real servers where they read
them: the lease watcher's record of owner changes and the PostgreSQL checks, the console poller's misses, the
receivers' repeat checks, the signals the faults are made of, the alarm plan.  The load generator, the catch-all
provocation and the broker fault run in the acceptance test itself (tests/test_cluster_acceptance.py), against
real gateways."""

from __future__ import annotations

import datetime
import json
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from aiohttp import web

from common.webhooks import sign
from testkit.cluster import (
    Ack,
    AlarmRecord,
    ClusterHarness,
    ConsolePoller,
    Layout,
    LeaseChange,
    LeaseWatcher,
    Process,
    ScheduledAlarm,
    Takeover,
    affected,
    puback_stall,
    takeover_report,
)
from testkit.emulators.scenario import WEBHOOK_SECRET
from testkit.faults import ThreadedApp
from testkit.gateway import wait_for
from testkit.nats import NatsNode
from testkit.services import free_port

pytestmark = pytest.mark.timeout(240)


class StandIn:
    """A partition's persistent session (or the catch-all's) as a plain paho subscriber: what a gateway's session
    will be, minus the gateway."""

    def __init__(self, client_id: str, topic: str, node: NatsNode) -> None:
        self.topic = topic
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=False
        )
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_connect = lambda *_args: self.client.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", node.mqtt_port, keepalive=10)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, json.loads(message.payload)))

    def snapshot(self) -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _write_influx(url: str, lines: list[str]) -> None:
    request = urllib.request.Request(f"{url}/write?db=firegrid&precision=ms", data="\n".join(lines).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 204


def test_lease_watcher_and_postgres_checks(tmp_path: Path, pg_url: str) -> None:
    harness = ClusterHarness(tmp_path)
    harness.pg_url = pg_url
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE partition_leases (partition INT PRIMARY KEY, owner TEXT, epoch BIGINT,"
            " expires_at TIMESTAMPTZ, previous_owner TEXT)"
        )
        conn.execute("CREATE TABLE cluster_commits (member TEXT, partition INT, epoch BIGINT, at TIMESTAMPTZ)")
        conn.execute(
            "CREATE TABLE alerts (id BIGSERIAL PRIMARY KEY, key TEXT, rule TEXT, building TEXT, floor INT,"
            " device TEXT, state TEXT, open INT, raised_ms BIGINT)"
        )
        conn.execute("CREATE TABLE audit (id BIGSERIAL PRIMARY KEY, alert_id BIGINT, action TEXT)")
        for p in range(17):  # 16: a catch-all lease, as a gateway may keep one; it is no data partition
            owner = "gw-a" if p < 8 or p == 16 else "gw-c"
            conn.execute(
                "INSERT INTO partition_leases VALUES (%s, %s, 1, now() + interval '60 seconds', NULL)", (p, owner)
            )

        watcher = harness.watcher = LeaseWatcher(pg_url, partitions=16).start()
        try:
            wait_for(lambda: not harness.unowned_partitions(), timeout=10, what="the watcher to see every owner")
            assert watcher.owned_by("gw-a") == list(range(8))
            fault = time.time()
            conn.execute("INSERT INTO cluster_commits VALUES ('gw-a', 3, 1, now())")  # before the takeover
            conn.execute(
                "UPDATE partition_leases SET owner = 'gw-b', epoch = 2, previous_owner = 'gw-a' WHERE partition < 4"
            )
            # A lease that runs out without a new owner: nobody owns the partition until someone takes it.
            conn.execute("UPDATE partition_leases SET expires_at = now() - interval '1 second' WHERE partition = 4")
            watcher.wait_polls(3)
            assert watcher.owned_by("gw-b") == [0, 1, 2, 3] and 4 in harness.unowned_partitions()
            moves = [c for c in watcher.history() if c.at >= fault]
            assert {(c.partition, c.before, c.after, c.epoch) for c in moves} == {
                *((p, "gw-a", "gw-b", 2) for p in range(4)),
                (4, "gw-a", None, 1),
            }
            time.sleep(0.3)  # commits after the watcher saw the move, by PostgreSQL's clock
            conn.execute("INSERT INTO cluster_commits VALUES ('gw-b', 0, 2, now()), ('gw-b', 1, 2, now())")
            conn.execute("INSERT INTO cluster_commits VALUES ('gw-b', 3, 2, now())")
            conn.execute("INSERT INTO cluster_commits VALUES ('gw-a', 3, 1, now() + interval '1 second')")  # fenced?
            takeovers = {t.partition: t for t in harness.takeovers("gw-a", [0, 1, 2, 3], fault_at=fault)}
            assert takeovers[2].committed_s is None and takeovers[2].new_owner == "gw-b"
            for p in (0, 1, 3):
                t = takeovers[p]
                assert t.new_owner == "gw-b" and t.lease_moved_s is not None and t.committed_s is not None
                assert 0 <= t.lease_moved_s <= t.committed_s < 5
            stale = harness.stale_commits("gw-a", since=fault - 5)
            assert [(r["partition"], r["epoch"], r["newer_epoch"]) for r in stale] == [(3, 1, 2)]
            assert len(harness.stale_against_leases("gw-a", since=fault - 5)) == 1
            assert harness.stale_commits("gw-b", since=fault - 5) == []
        finally:
            watcher.stop()

        # Alerts: a key raised twice (two rows, or two raised steps), and alarm latencies from raised_ms.
        now_ms = int(time.time() * 1000)
        conn.execute(
            "INSERT INTO alerts (key, rule, building, floor, device, state, open, raised_ms) VALUES"
            " ('sda:b001:1:b001-d0', 'smoke-detector-alarm', 'b001', 1, 'b001-d0', 'raised', 1, %s),"
            " ('fc:b002:2', 'fire-confirmed', 'b002', 2, NULL, 'raised', 1, %s),"
            " ('sda:b003:1:b003-d0', 'smoke-detector-alarm', 'b003', 1, 'b003-d0', 'raised', 1, %s),"
            " ('sda:b003:1:b003-d0', 'smoke-detector-alarm', 'b003', 1, 'b003-d0', 'raised', 0, %s)",
            (now_ms + 400, now_ms + 2500, now_ms, now_ms),
        )
        conn.execute("INSERT INTO audit (alert_id, action) VALUES (1, 'raised'), (1, 'raised'), (2, 'raised')")
    assert sorted(harness.keys_raised_twice()) == [
        "sda:b001:1:b001-d0 (2 raised steps)",
        "sda:b003:1:b003-d0 (2 rows)",
    ]

    def record(device: str, building: str, floor: int) -> AlarmRecord:
        return AlarmRecord(device, building, floor, 1, now_ms, now_ms, 0.0)

    alarms = [
        ScheduledAlarm("single", "b001", 1, (record("b001-d0", "b001", 1),), "background"),
        ScheduledAlarm("double", "b002", 2, (record("b002-d2", "b002", 2), record("b002-d3", "b002", 2)), "x"),
        ScheduledAlarm("single", "b004", 1, (record("b004-d0", "b004", 1),), "x"),
    ]
    latencies = [lat for _, lat in harness.alarm_latencies(alarms)]
    assert latencies == [0.4, 2.5, None]


def test_console_poller_records_every_miss(tmp_path: Path, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alerts (id BIGSERIAL PRIMARY KEY, key TEXT, open INT)")
        conn.execute("INSERT INTO alerts (key, open) VALUES ('a', 1), ('b', 1), ('c', 0)")
    shown = {"buildings": ["b000", "b001"], "alerts": [1]}

    async def buildings(_request: web.Request) -> web.Response:
        return web.json_response({"items": [{"id": b} for b in shown["buildings"]]})

    async def alerts(request: web.Request) -> web.Response:
        assert request.query["active"] == "true"
        return web.json_response({"items": [{"id": i} for i in shown["alerts"]]})

    async def metrics(_request: web.Request) -> web.Response:
        text = (
            "# HELP firegrid_mqtt_acks_total acks\n# TYPE firegrid_mqtt_acks_total counter\n"
            "firegrid_mqtt_acks_total 1234.0\nfiregrid_mqtt_acks_created 1.7e9\n"
            'firegrid_rejections_total{reason="stale"} 2.0\nfiregrid_rejections_total{reason="wrong_shape"} 3.0\n'
        )
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/api/v1/buildings", buildings)
    app.router.add_get("/api/v1/alerts", alerts)
    app.router.add_get("/metrics", metrics)
    server = ThreadedApp(app).start()
    try:
        # The bench reads a gateway's counters this way.
        gateway = Process(name="fake", argv=[], http_port=server.port, workdir=tmp_path)
        assert gateway.metric("firegrid_mqtt_acks_total") == 1234.0
        assert gateway.metric("firegrid_rejections_total") == 5.0
        assert gateway.metric("firegrid_absent_total") == 0.0
        poller = ConsolePoller(pg_url=pg_url, base_url=server.url, buildings=["b000", "b001", "b002"])
        problems = poller.poll_once()
        assert len(problems) == 2, problems
        assert "lacks 1 buildings" in problems[0] and "['b002']" in problems[0]
        assert "lacks 1 open alerts" in problems[1] and "[2]" in problems[1]
        shown["buildings"].append("b002")
        shown["alerts"].append(2)
        assert poller.poll_once() == []
    finally:
        server.stop()
    assert "answered 0" in poller.poll_once()[0]  # the console is gone: a miss, not an exception


def test_receiver_checks_find_repeats_under_new_ids(tmp_path: Path) -> None:
    harness = ClusterHarness(tmp_path)
    harness.webhooks.start()
    try:

        def deliver(msg_id: str, event: str, key: str) -> None:
            body = json.dumps({"type": event, "timestamp": "2026-12-04T00:00:00Z", "data": {"key": key}}).encode()
            stamp = int(time.time())
            request = urllib.request.Request(
                harness.webhooks.url,
                data=body,
                headers={
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": sign(WEBHOOK_SECRET, msg_id, stamp, body),
                    "content-type": "application/json",
                },
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert response.status == 200

        deliver("m1", "alert.raised", "k1")
        deliver("m1", "alert.raised", "k1")  # a repeat under the same id: fine
        deliver("m2", "alert.raised", "k2")
        assert harness.webhook_id_conflicts() == []
        deliver("m3", "alert.raised", "k2")  # the same event again under a new id
        assert harness.webhook_id_conflicts() == ["alert.raised k2: ['m2', 'm3']"]
    finally:
        harness.webhooks.stop()
    # The SMS emulator's record: the same page to the same phone twice is a duplicate, another incident is not.
    page = {"phone": "13800000100", "template": "SMS_100001", "params": {"code": "1234"}}
    harness.sms.messages.extend([page, dict(page, params={"code": "5678"})])
    assert harness.sms_sent_twice() == []
    harness.sms.messages.append(dict(page))
    assert len(harness.sms_sent_twice()) == 1


def test_process_signals(tmp_path: Path) -> None:
    """The faults: SIGSTOP leaves the socket open but unanswered, SIGCONT resumes, SIGTERM ends, SIGKILL kills."""
    port = free_port()
    server = Process(
        name="http",
        argv=[sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(tmp_path)],
        http_port=port,
        workdir=tmp_path,
    )
    server.start(timeout=30)
    try:

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"{server.base_url}/", timeout=0.5) as response:
                    return response.status == 200
            except (OSError, TimeoutError):
                return False

        assert answers()
        server.sigstop()
        assert not answers()
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # the kernel still accepts: a hung process, not a dead one
        server.sigcont()
        wait_for(answers, timeout=5, what="the resumed server to answer")
        server.sigterm()
        server.wait_exit(timeout=10)
        assert not server.running
        server.start(timeout=30)
        server.sigstop()
        server.sigkill()  # a hung process can still be killed
        assert not server.running
    finally:
        server.stop(timeout=5)


def test_lease_liveness_by_the_database_clock() -> None:
    from testkit.cluster import _live

    now = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
    later, earlier = now + datetime.timedelta(seconds=5), now - datetime.timedelta(seconds=5)
    assert _live(later, now) and not _live(earlier, now) and not _live(None, now)
    assert _live(later.timestamp() * 1000, now) and not _live(earlier.timestamp() * 1000, now)  # epoch ms
    assert _live(int(later.timestamp()), now) and not _live(int(earlier.timestamp()), now)  # epoch s


def test_alarm_plan_and_ack_figures() -> None:
    from testkit.cluster import AlarmPlan

    layout = Layout()
    plan = AlarmPlan(layout)
    taken = [plan.take(["b000", "b001"]) for _ in range(9)]
    assert taken[-1] is None and len({t for t in taken if t}) == 8
    assert layout.smoke_pair("b000", 2) == ("b000-d2", "b000-d3")
    record = AlarmRecord("b000-d0", "b000", 1, 1, 0, 100_000, 0.0)
    background = ScheduledAlarm("single", "b000", 1, (record,), "background")
    moved = [LeaseChange(7, "gw-a", "gw-b", 2, 110.0, 0.0)]
    assert affected(ScheduledAlarm("single", "b000", 1, (record,), "A killed"), [], partition=7)
    assert affected(background, moved, partition=7)  # its partition changed owner 10 s after the publish
    assert not affected(background, moved, partition=8)
    assert not affected(background, [LeaseChange(7, "gw-a", "gw-b", 2, 96.0, 0.0)], partition=7)
    assert affected(background, [], partition=8, broker_fault=(90.0, 96.0))
    assert not affected(background, [], partition=8, broker_fault=(110.0, 120.0))
    lines, failures = takeover_report("kill", [Takeover(1, 0.8, 1.2, "gw-b"), Takeover(2, 0.9, None, None)], 5.0)
    assert "committing elsewhere within 1.20 s" in lines[0] and "p2->None:never" in lines[0]
    assert failures == ["kill: partition 2 committing elsewhere after None s > 5.0 s"]
    assert takeover_report("kill", [], 5.0)[1] == [
        "kill: the victim owned no partition at the fault, nothing was taken over"
    ]
    acks = [Ack("d", i, i, i, float(i), float(i) + (5.0 if i == 3 else 0.1)) for i in range(6)]
    longest, gap = puback_stall(acks, since_mono=2.0, until_mono=4.0)
    assert longest == 5.0 and gap == pytest.approx(2.9)
