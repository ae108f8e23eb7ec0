"""Cluster mode end to end, small: two ``firegrid run`` gateways over one PostgreSQL store and a three-node NATS
cluster.  They share the partitions; an alarm raises its alert once, whichever gateway owns its building; when one
gateway is SIGKILLed the other takes its partitions over and raises an alarm in one of them, once; a gateway
stopped with SIGTERM hands its partitions over at once.  (The full acceptance test, with load and every fault, is
tests/test_cluster_acceptance.py.)"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

from common.partitions import partition_of
from testkit.gateway import Gateway, store_rows, wait_for, write_config
from testkit.nats import NatsCluster
from testkit.postgres import PostgresServer
from testkit.services import free_port

P = 8
BUILDINGS = 8


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats", partitions=P, mqtt_ack_wait="2s").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _gateway(tmp_path: Path, name: str, *, url: str, nats: NatsCluster) -> Gateway:
    workdir = tmp_path / name
    workdir.mkdir()
    path, port = write_config(
        workdir,
        mqtt_url=nats.mqtt_urls[0],
        influx_url=None,
        devices=BUILDINGS * 2,
        buildings=BUILDINGS,
        client_id="fgc",
        http_port=free_port(),
        extra={
            "mqtt": {"protocol": "v311", "event_lane": False},
            "store": {"url": url},
            "cluster": {
                "member": name,
                "partitions": P,
                "brokers": nats.mqtt_urls,
                "lease_ttl_s": 6,
                "renew_interval_s": 2,
                "probe_interval_s": 0.5,
                "ack_wait_s": 2,
                "audit_commits": True,
            },
        },
    )
    return Gateway(path, port, workdir / "gateway.log")


def _owners(url: str) -> dict[int, str | None]:
    return {r["partition"]: r["owner"] for r in store_rows(url, "SELECT partition, owner FROM partition_leases")}


class Device:
    def __init__(self, nats: NatsCluster, name: str) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv311)
        port = int(nats.mqtt_urls[1].rpartition(":")[2])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def alarm(self, building: str, device: str) -> None:
        payload = json.dumps({"ts": int(time.time() * 1000), "obscuration": 12.0, "alarm": True})
        self.client.publish(f"firegrid/{building}/{device}/telemetry", payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _post(gateway: Gateway, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.http_port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer test-admin", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _alerts(url: str, building: str) -> list[dict[str, Any]]:
    return store_rows(
        url, "SELECT id, key, building FROM alerts WHERE building = ? AND rule = 'smoke-detector-alarm'", (building,)
    )


def test_two_gateways_share_the_partitions_and_take_over_from_a_dead_one(
    tmp_path: Path, postgres: PostgresServer, nats: NatsCluster
) -> None:
    url = postgres.create_database()
    a = _gateway(tmp_path, "gw-a", url=url, nats=nats).start()
    b = _gateway(tmp_path, "gw-b", url=url, nats=nats).start()
    gateways = [a, b]
    device = Device(nats, "dev-1")
    try:
        wait_for(
            lambda: set(_owners(url).values()) == {"gw-a", "gw-b"}, timeout=30, what="both gateways to own partitions"
        )
        owners = _owners(url)
        assert sorted(list(owners.values()).count(m) for m in ("gw-a", "gw-b")) == [P // 2, P // 2]
        # the partition sessions must exist on every node before devices publish (docs/cluster.md, finding 7)
        wait_for(lambda: nats.consumers_everywhere(*[f"fgp/{p}/+/+/+" for p in range(P)]), timeout=30, what="sessions")
        of_a = [f"b{i:02d}" for i in range(BUILDINGS) if owners[partition_of(f"b{i:02d}", P)] == "gw-a"]
        assert of_a, "gw-a owns no building of the test"
        first = of_a[0]
        dev = f"d{int(first[1:]):03d}"
        device.alarm(first, dev)
        wait_for(lambda: len(_alerts(url, first)) == 1, timeout=15, what=f"the alarm in {first} raised")
        # what a member cannot do for a building another member judges says so: a maintenance window belongs in
        # the owner's engine, and telemetry pushed over HTTP would be judged by whichever member it reached
        of_b = [f"b{i:02d}" for i in range(BUILDINGS) if owners[partition_of(f"b{i:02d}", P)] == "gw-b"]
        status, body = _post(
            a, "/api/v1/maintenance", {"building": of_b[0], "duration_s": 600, "reason": "detector cleaning"}
        )
        assert status == 409 and "another cluster member" in body["detail"], body
        status, body = _post(a, "/api/v1/ingest/telemetry", {"device": dev, "ts": 1, "values": {"obscuration": 1.0}})
        assert status == 409 and "cluster mode" in body["reason"], body

        a.kill()
        killed = time.monotonic()
        wait_for(lambda: "gw-a" not in _owners(url).values(), timeout=15, what="gw-a's partitions taken over")
        took = time.monotonic() - killed
        assert took <= 5.0, f"a crashed gateway's partitions moved in {took:.1f} s (limit 5 s)"
        second = of_a[-1] if len(of_a) > 1 else first
        other = f"d{int(second[1:]) + BUILDINGS:03d}"  # the building's second detector
        device.alarm(second, other)
        wait_for(
            lambda: len(store_rows(url, "SELECT id FROM alerts WHERE device = ?", (other,))) == 1,
            timeout=15,
            what=f"the alarm in {second} raised by the new owner",
        )
        # the first alarm's alert was not raised a second time by the new owner (it adopted it from the store)
        assert len(store_rows(url, "SELECT id FROM alerts WHERE device = ?", (dev,))) == 1
        # and nothing was committed under gw-a's name after it died
        late = store_rows(
            url,
            "SELECT count(*) AS n FROM cluster_commits"
            " WHERE member = 'gw-a' AND at > now() - (? * interval '1 second')",
            (time.monotonic() - killed - 0.5,),
        )
        assert late == [{"n": 0}]

        # a third gateway joins: gw-b hands half of the partitions over (drained first, so nothing waits an ack wait)
        c = _gateway(tmp_path, "gw-c", url=url, nats=nats).start()
        gateways.append(c)
        wait_for(
            lambda: sorted(o or "-" for o in _owners(url).values()) == ["gw-b"] * (P // 2) + ["gw-c"] * (P // 2),
            timeout=20,
            what="gw-c's share",
        )
        owners = _owners(url)
        of_c = [f"b{i:02d}" for i in range(BUILDINGS) if owners[partition_of(f"b{i:02d}", P)] == "gw-c"]
        third = of_c[0]
        device.alarm(third, f"d{int(third[1:]):03d}")
        wait_for(
            lambda: len(store_rows(url, "SELECT id FROM alerts WHERE device = ?", (f"d{int(third[1:]):03d}",))) == 1,
            timeout=15,
            what=f"the alarm in {third} raised by gw-c",
        )

        # gw-b stops gracefully: gw-c owns everything within 3 s of the SIGTERM
        assert b.proc is not None
        b.proc.terminate()
        stopped = time.monotonic()
        wait_for(lambda: set(_owners(url).values()) == {"gw-c"}, timeout=15, what="gw-b's partitions handed over")
        took = time.monotonic() - stopped
        assert took <= 3.0, f"a stopped gateway's partitions moved in {took:.1f} s (limit 3 s)"
        assert b.proc.wait(timeout=30) == 0
        # every alarm of the test raised exactly one alert
        counts = store_rows(
            url, "SELECT device, count(*) AS n FROM alerts WHERE rule = 'smoke-detector-alarm' GROUP BY device"
        )
        assert counts and all(row["n"] == 1 for row in counts), counts
    finally:
        device.close()
        for g in gateways:
            g.kill()
