"""End to end against real Mosquitto and InfluxDB 1.x: every reading the broker delivered ends up in InfluxDB,
through gateway crashes (SIGKILL), an InfluxDB outage and a broker restart."""

from __future__ import annotations

from pathlib import Path

from tests.harness.services import InfluxServer, MosquittoServer
from tests.test_gateway_helpers import Gateway, Publisher, publish_all, readings, wait_for, write_config

TOTAL = 10_000


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
    finally:
        publisher.close()
        assert gateway.stop() == 0, gateway.log_tail()


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
    """Mosquitto restarted (persistence on) while the gateway has a backlog: the gateway reconnects with capped
    backoff, resumes its persistent session, and every reading arrives."""
    gateway = _gateway(tmp_path, mosquitto, influx).start()
    publisher = Publisher(mosquitto.port)
    items = readings()
    try:
        publish_all(publisher, items[:5000])
        publisher.wait_acked()
        mosquitto.restart()  # graceful: the broker saves its persistent sessions and queues
        publish_all(publisher, items[5000:])
        publisher.wait_acked()
        wait_for(lambda: _count(influx) >= TOTAL, timeout=60, what=f"{TOTAL} points in InfluxDB")
        assert _count(influx) == TOTAL
        assert gateway.metric("firegrid_mqtt_reconnects_total") >= 1
        assert '"MQTT reconnected' in gateway.log_tail(200) or "reconnected" in gateway.log_tail(200)
    finally:
        publisher.close()
        gateway.stop()
