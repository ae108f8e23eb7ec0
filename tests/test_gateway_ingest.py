"""End to end against real Mosquitto and InfluxDB 1.x: every reading the broker delivered ends up in InfluxDB,
through gateway crashes (SIGKILL), an InfluxDB outage and a broker restart."""

from __future__ import annotations

from pathlib import Path

from testkit.gateway import (
    Gateway,
    Publisher,
    publish_all,
    readings,
    retained,
    wait_for,
    write_config,
)
from testkit.services import InfluxServer, MosquittoServer

TOTAL = 10_000
STATUS = "firegrid/_gateway/gw-test/status"


def _count(influx: InfluxServer) -> int:
    return influx.count("smoke", "obscuration")


def _gateway(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> Gateway:
    config, port = write_config(tmp_path, mqtt_url=mosquitto.url, influx_url=influx.url)
    return Gateway(config, port, tmp_path / "gateway.log")


def test_all_readings_reach_influx(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    gateway = _gateway(tmp_path, mosquitto, influx).start()
    publisher = Publisher(mosquitto.port)
    try:
        publish_all(publisher, readings())
        publisher.wait_acked()
        wait_for(lambda: _count(influx) >= TOTAL, timeout=60, what=f"{TOTAL} points in InfluxDB")
        assert _count(influx) == TOTAL
        assert gateway.metric("firegrid_mqtt_messages_total", channel="telemetry") == TOTAL
        assert gateway.metric("firegrid_mqtt_acks_total") >= TOTAL  # + the gateway's own retained status
        assert retained(mosquitto.port, STATUS) == b"online"
    finally:
        publisher.close()
        assert gateway.stop() == 0, gateway.log_tail()  # SIGTERM: graceful
    assert retained(mosquitto.port, STATUS) == b"offline"


def test_gateway_sigkilled_twice(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    """SIGKILL at two moments mid-stream; each restart resumes the persistent session.  Nothing is lost."""
    gateway = _gateway(tmp_path, mosquitto, influx).start()
    publisher = Publisher(mosquitto.port)
    items = readings()
    try:
        publish_all(publisher, items[:3000])
        # kill while the gateway is busy with this first part (some taken in, some acknowledged, some not yet)
        wait_for(lambda: gateway.metric("firegrid_mqtt_acks_total") >= 500, timeout=30, what="first acks")
        gateway.kill()
        publish_all(publisher, items[3000:6000])  # arrives while the gateway is dead: queued in its session
        gateway.start()
        publish_all(publisher, items[6000:8000])
        wait_for(lambda: gateway.metric("firegrid_mqtt_acks_total") >= 1000, timeout=30, what="acks after restart")
        gateway.kill()
        publish_all(publisher, items[8000:])
        publisher.wait_acked()
        gateway.start()
        wait_for(lambda: _count(influx) >= TOTAL, timeout=90, what=f"{TOTAL} points in InfluxDB")
        assert _count(influx) == TOTAL
    finally:
        publisher.close()
        gateway.stop()


def test_influx_outage(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    """InfluxDB stopped mid-run: the gateway keeps acknowledging (the spool is the hand-off), reports spooling in
    /readyz and /metrics, and writes everything in order when InfluxDB returns.

    The outage lasts until every reading is spooled and the writer has failed and backed off repeatedly, rather
    than a fixed 30 s: the code path (retry with capped backoff while the spool grows) is the same, only the number
    of retries differs."""
    gateway = _gateway(tmp_path, mosquitto, influx).start()
    publisher = Publisher(mosquitto.port)
    items = readings()
    try:
        publish_all(publisher, items[:3000])
        wait_for(lambda: _count(influx) >= 1000, timeout=30, what="first points in InfluxDB")
        influx.stop()
        publish_all(publisher, items[3000:])
        publisher.wait_acked()
        wait_for(lambda: gateway.metric("firegrid_mqtt_acks_total") >= TOTAL, timeout=60, what="all acknowledged")
        wait_for(lambda: gateway.metric("firegrid_influx_write_failures_total") >= 3, timeout=30, what="write retries")
        assert gateway.metric("firegrid_spool_depth_points") > 0
        status, body = gateway.get("/readyz")
        assert status == 200, body  # InfluxDB down but spooling: still ready
        assert '"spooling": true' in body.replace('"spooling":true', '"spooling": true')
        influx.start()
        wait_for(lambda: _count(influx) >= TOTAL, timeout=60, what=f"{TOTAL} points in InfluxDB")
        assert _count(influx) == TOTAL
        wait_for(lambda: gateway.metric("firegrid_spool_depth_points") == 0, timeout=10, what="empty spool")
        assert gateway.metric("firegrid_spool_dropped_points_total") == 0
    finally:
        publisher.close()
        gateway.stop()


def test_broker_restart(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    """Mosquitto restarted (persistence on) twice: once while readings are queued in the gateway's persistent session
    (the gateway is down), once while the gateway is connected and draining that backlog.  The gateway reconnects
    with capped backoff, resumes its session, and every reading arrives."""
    gateway = _gateway(tmp_path, mosquitto, influx).start()
    publisher = Publisher(mosquitto.port)
    items = readings()
    try:
        publish_all(publisher, items[:2000])
        publisher.wait_acked()
        gateway.kill()
        publish_all(publisher, items[2000:6000])  # queued for the absent gateway
        publisher.wait_acked()
        mosquitto.restart()  # graceful: the broker saves sessions and queues to its persistence file
        gateway.start()
        wait_for(lambda: gateway.metric("firegrid_mqtt_acks_total") >= 500, timeout=30, what="backlog draining")
        mosquitto.restart()  # now with the gateway connected
        wait_for(lambda: gateway.metric("firegrid_mqtt_reconnects_total") >= 1, timeout=30, what="a reconnect")
        publish_all(publisher, items[6000:])
        publisher.wait_acked()
        wait_for(lambda: _count(influx) >= TOTAL, timeout=60, what=f"{TOTAL} points in InfluxDB")
        assert _count(influx) == TOTAL
        reconnect_logs = [line for line in gateway.log_tail(400).splitlines() if "reconnect" in line]
        assert reconnect_logs and all('"level":"info"' in line for line in reconnect_logs), reconnect_logs
    finally:
        publisher.close()
        gateway.stop()


def test_shared_subscription_splits_the_load(tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer) -> None:
    """Two gateways in one shared group (one on MQTT 5, one on 3.1.1) split the readings; together they write all."""
    gateways = []
    for name, protocol in (("a", "v5"), ("b", "v311")):
        workdir = tmp_path / name
        workdir.mkdir()
        config, port = write_config(
            workdir,
            mqtt_url=mosquitto.url,
            influx_url=influx.url,
            client_id=f"gw-{name}",
            extra={"mqtt": {"shared_group": "firegrid", "protocol": protocol}},
        )
        gateways.append(Gateway(config, port, workdir / "gateway.log").start())
    publisher = Publisher(mosquitto.port)
    items = readings(per_device=10)
    try:
        publish_all(publisher, items)
        publisher.wait_acked()
        wait_for(lambda: _count(influx) >= len(items), timeout=60, what="all points in InfluxDB")
        assert _count(influx) == len(items)
        shares = [g.metric("firegrid_mqtt_messages_total", channel="telemetry") for g in gateways]
        assert sum(shares) == len(items) and all(share > 0 for share in shares), shares
        for g in gateways:  # each says what a shared group does to rules (docs/gateway.md)
            assert "mqtt.shared_group 'firegrid'" in g.log_path.read_text(errors="replace")
    finally:
        publisher.close()
        for g in gateways:
            g.stop()


def test_each_broker_outage_starts_the_backoff_again(
    tmp_path: Path, mosquitto: MosquittoServer, influx: InfluxServer
) -> None:
    """Four broker SIGKILLs in a row: after each reconnect, the next outage's first retry is at the base delay
    (0.25 s, jittered down), not at a delay grown by the earlier outages (which reached the 30 s cap after a few
    restarts, while alarms waited in the broker)."""
    gateway = _gateway(tmp_path, mosquitto, influx).start()
    try:
        for n in range(1, 5):
            mosquitto.restart(kill=True)
            wait_for(
                lambda n=n: gateway.metric("firegrid_mqtt_reconnects_total") >= n, timeout=60, what=f"reconnect {n}"
            )
        lines = [line for line in gateway.log_tail(2000).splitlines() if "reconnect" in line]
        firsts: list[float] = []
        expect_first = True
        for line in lines:
            if "reconnected to" in line:
                expect_first = True
            elif "reconnecting in" in line and expect_first:
                firsts.append(float(line.split("reconnecting in ")[1].split(" s")[0]))
                expect_first = False
        assert len(firsts) >= 4, lines
        assert all(delay <= 0.3 for delay in firsts), f"first retry delay of each outage: {firsts}"
    finally:
        gateway.stop()
