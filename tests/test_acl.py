"""``firegrid acl``: the files it writes are accepted by a real Mosquitto, and they stop a device spoofing another.

A publish denied by an ACL is still PUBACKed to an MQTT 3.1.1 client (3.1.1 has no way to say no), so "denied" is
proven the only honest way: a subscriber logged in as the gateway user sees the legitimate message and never the
spoofed one, which the broker handled first.  With MQTT v5 the broker also says so in the PUBACK reason code (0x87
not authorized).
"""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml

from gateway.config import load_config, parse_config
from gateway.ingest.contract import Decoder, registry_from_config
from gateway.tools.acl import (
    ACL_FILE,
    CREDENTIALS_FILE,
    PASSWD_FILE,
    build,
    derive_password,
    hash_password,
    verify_password,
    write_bundle,
)
from rules.types import Reading
from testkit.services import MosquittoServer

ROOT = Path(__file__).resolve().parent.parent
NOT_AUTHORIZED = 0x87

CONFIG: dict[str, Any] = {
    "mqtt": {"client_id": "gw-1", "topic_prefix": "firegrid", "username": "gateway", "password": "gw-pass"},
    "acl": {"device_secret": "s3cret-for-tests", "simulator_username": "sim", "simulator_password": "sim-pass"},
    "buildings": [{"id": "b1", "name": "One", "grid": "g1", "floors": 5}, {"id": "b2", "name": "Two", "grid": "g1"}],
    "devices": [
        {"id": "sd-1", "building": "b1", "kind": "smoke", "floor": 1},
        {"id": "sd-2", "building": "b1", "kind": "smoke", "floor": 2},
        {"id": "ht-9", "building": "b2", "kind": "heat", "floor": 1},
    ],
}


def wait_for(predicate, *, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Client:
    """A paho client run on its own thread, with what it receives and the PUBACK reason codes it got."""

    def __init__(self, server: MosquittoServer, user: str | None, password: str | None, *, v5: bool) -> None:
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}-{time.monotonic_ns()}", protocol=protocol
        )
        if user is not None:
            self.client.username_pw_set(user, password)
        self.connected: queue.Queue[Any] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.acks: dict[int, int] = {}
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self._lock = threading.Lock()
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.put(rc)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.put([int(r.value) for r in rcs])

        def on_publish(c: Any, u: Any, mid: int, rc: Any, p: Any) -> None:
            with self._lock:
                self.acks[mid] = int(rc.value)

        self.client.on_publish = on_publish
        self.client.connect("127.0.0.1", server.port, keepalive=30)
        self.client.loop_start()
        rc = self.connected.get(timeout=10)
        self.refused = rc.is_failure
        self.reason = str(rc)

    def publish(self, topic: str, payload: bytes | str) -> int:
        """Publish at QoS 1 and return the PUBACK's reason code (always 0 for 3.1.1, even when denied)."""
        info = self.client.publish(topic, payload, qos=1)
        wait_for(lambda: info.mid in self.acks, what=f"PUBACK for {topic}")
        return self.acks[info.mid]

    def subscribe(self, topic: str) -> list[int]:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def generated(tmp_path: Path) -> tuple[Path, Any]:
    config = parse_config(CONFIG)
    out = tmp_path / "auth"
    write_bundle(config, out)
    return out, config


@pytest.fixture
def broker(tmp_path: Path, generated: tuple[Path, Any]) -> Iterator[MosquittoServer]:
    out, _ = generated
    server = MosquittoServer(
        workdir=tmp_path / "mosquitto",
        allow_anonymous=False,
        extra_config=(f"password_file {out / PASSWD_FILE}", f"acl_file {out / ACL_FILE}"),
    ).start()
    try:
        yield server
    finally:
        server.stop(timeout=5)


@pytest.fixture
def clients(broker: MosquittoServer) -> Iterator[Any]:
    made: list[Client] = []

    def connect(user: str | None, password: str | None = None, *, v5: bool = True) -> Client:
        if password is None and user is not None:
            password = {"gateway": "gw-pass", "sim": "sim-pass"}.get(user) or derive_password("s3cret-for-tests", user)
        client = Client(broker, user, password, v5=v5)
        made.append(client)
        return client

    yield connect
    for client in made:
        client.close()


def drain(client: Client, until_topic: str, *, timeout: float = 10.0) -> list[tuple[str, bytes]]:
    """Every message up to and including the first one on ``until_topic`` (the broker keeps per-client order)."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        got.append((msg.topic, msg.payload))
        if msg.topic == until_topic:
            return got


# --- the hash ---------------------------------------------------------------------------------------------------------


def test_hash_format_matches_mosquitto_passwd(tmp_path: Path) -> None:
    hashed = hash_password("correct horse", salt=b"0123456789ab")
    _, kind, iterations, salt, _digest = hashed.split("$")
    assert (kind, iterations, len(salt)) == ("7", "101", 16)  # 12 bytes base64 -> 16 chars
    assert verify_password("correct horse", hashed)
    assert not verify_password("wrong", hashed)
    # And the other way round: a line written by the real mosquitto_passwd verifies with our algorithm.
    tool = "/usr/bin/mosquitto_passwd"
    if not os.access(tool, os.X_OK):
        pytest.skip("mosquitto_passwd not installed")
    pwfile = tmp_path / "pw"
    subprocess.run([tool, "-b", "-c", str(pwfile), "alice", "correct horse"], check=True, capture_output=True)
    line = pwfile.read_text().strip()
    assert line.startswith("alice:$7$101$")
    assert verify_password("correct horse", line.split(":", 1)[1])
    assert not verify_password("correct horsE", line.split(":", 1)[1])


def test_derived_passwords_are_stable_and_random_ones_are_kept(tmp_path: Path) -> None:
    derived = parse_config(CONFIG)
    first = {u.name: u.password for u in build(derived).users}
    assert first == {u.name: u.password for u in build(derived).users}
    assert first["sd-1"] == derive_password("s3cret-for-tests", "sd-1") != first["sd-2"]
    assert first["gateway"] == "gw-pass"  # mqtt.password wins for the gateway

    random_config = parse_config({**CONFIG, "acl": {}, "mqtt": {"client_id": "gw-1"}})
    out = tmp_path / "auth"
    one = {u.name: u.password for u in write_bundle(random_config, out).users}
    assert set(one) == {"firegrid-gateway", "sd-1", "sd-2", "ht-9"}
    assert len(set(one.values())) == 4
    # A rerun (say, after adding a device) keeps every password already handed out.
    more = {**CONFIG, "acl": {}, "mqtt": {"client_id": "gw-1"}}
    more["devices"] = [*CONFIG["devices"], {"id": "sd-3", "building": "b1", "kind": "smoke", "floor": 3}]
    two = {u.name: u.password for u in write_bundle(parse_config(more), out).users}
    assert {k: two[k] for k in one} == one and "sd-3" in two
    for name, mode in ((PASSWD_FILE, 0o600), (CREDENTIALS_FILE, 0o600), (ACL_FILE, 0o644)):
        assert stat.S_IMODE((out / name).stat().st_mode) == mode, name
    creds = yaml.safe_load((out / CREDENTIALS_FILE).read_text())
    assert creds["sd-3"]["password"] == two["sd-3"] and creds["sd-3"]["building"] == "b1"


def test_device_named_like_the_gateway_is_refused() -> None:
    from gateway.tools.acl import AclError

    clash = {**CONFIG, "devices": [{"id": "gateway", "building": "b1", "kind": "smoke"}]}
    with pytest.raises(AclError, match="clashes"):
        build(parse_config(clash))


def test_cli_on_the_example_community(tmp_path: Path) -> None:
    out = tmp_path / "auth"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.tools.cli",
            "acl",
            "--config",
            str(ROOT / "examples/community.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    config = load_config(ROOT / "examples/community.yaml")
    users = [line.split(":", 1)[0] for line in (out / PASSWD_FILE).read_text().splitlines()]
    assert users == ["firegrid-gateway", *(d.id for d in config.devices)]
    acl = (out / ACL_FILE).read_text()
    assert acl.count("\nuser ") == len(config.devices) + 1
    assert "topic read" not in acl.split("user ", 2)[2]  # after the gateway block, no one may read
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.tools.cli",
            "acl",
            "--config",
            str(tmp_path / "missing.yaml"),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "cannot read" in bad.stderr


# --- against a real Mosquitto -------------------------------------------------------------------------------------


def test_wrong_password_and_anonymous_are_refused(clients) -> None:
    assert not clients("gateway").refused
    assert clients("sd-1", "not-the-password").refused
    assert clients(None).refused
    assert clients("nobody", "x", v5=False).refused


@pytest.mark.parametrize("v5", [True, False], ids=["mqttv5", "mqttv311"])
def test_device_cannot_publish_as_another_device(clients, generated, v5: bool) -> None:
    _, config = generated
    gateway = clients("gateway")
    assert gateway.subscribe("firegrid/#") == [1]
    device = clients("sd-1", v5=v5)

    spoofed = device.publish("firegrid/b1/sd-2/telemetry", b'{"obscuration": 9.0, "alarm": true}')
    other_building = device.publish("firegrid/b2/ht-9/telemetry", b'{"celsius": 99.0}')
    fake_gateway = device.publish("firegrid/_gateway/gw-1/status", b"offline")
    legit = device.publish("firegrid/b1/sd-1/telemetry", b'{"obscuration": 0.4, "alarm": false, "seq": 7}')
    if v5:
        # MQTT v5 tells the publisher; 3.1.1 cannot, and the broker PUBACKs a denied publish as if it were fine.
        assert (spoofed, other_building, fake_gateway, legit) == (NOT_AUTHORIZED, NOT_AUTHORIZED, NOT_AUTHORIZED, 0)
    else:
        assert (spoofed, other_building, fake_gateway, legit) == (0, 0, 0, 0)

    # Mosquitto handles one client's publishes in order, so anything not denied would have arrived before this.
    got = drain(gateway, "firegrid/b1/sd-1/telemetry")
    assert [topic for topic, _ in got] == ["firegrid/b1/sd-1/telemetry"]

    # The legitimate one is ingestible: it passes the telemetry contract as a reading of sd-1.
    decoder = Decoder(prefix="firegrid", registry=registry_from_config(config))
    decoded = decoder.decode(got[0][0], got[0][1], received_ms=int(time.time() * 1000))
    (reading,) = decoded.inputs
    assert isinstance(reading, Reading)
    assert (reading.ref.device, reading.ref.building, reading.seq) == ("sd-1", "b1", 7)


def test_devices_read_nothing_and_the_gateway_publishes_only_its_status(clients) -> None:
    spy = clients("sd-2")
    spy.subscribe("firegrid/#")  # accepted or not, nothing may be delivered to a device
    watcher = clients("gateway")
    watcher.subscribe("firegrid/#")
    gateway = clients("gateway", v5=True)
    assert gateway.publish("firegrid/b1/sd-1/telemetry", b'{"alarm": true}') == NOT_AUTHORIZED
    assert gateway.publish("firegrid/_gateway/other-gw/status", b"online") == NOT_AUTHORIZED
    assert gateway.publish("firegrid/_gateway/gw-1/status", b"online") == 0
    clients("sd-1").publish("firegrid/b1/sd-1/status", b"online")
    got = drain(watcher, "firegrid/b1/sd-1/status")
    assert [t for t, _ in got] == ["firegrid/_gateway/gw-1/status", "firegrid/b1/sd-1/status"]
    # Mosquitto 2.0 grants the subscription and filters at delivery.  A PUBACK travels on the spy's socket after
    # anything the broker sent it earlier, so once it is here an undue delivery would already have been received.
    assert spy.publish("firegrid/b1/sd-2/status", b"online") == 0
    assert spy.messages.empty()


def test_gateway_may_use_a_shared_subscription(clients) -> None:
    """Several gateways splitting the load (mqtt.shared_group) subscribe with $share/...; the ACL allows it."""
    gateway = clients("gateway")
    assert gateway.subscribe("$share/gateways/firegrid/+/+/telemetry") == [1]
    clients("sd-1").publish("firegrid/b1/sd-1/telemetry", b'{"alarm": false}')
    assert [t for t, _ in drain(gateway, "firegrid/b1/sd-1/telemetry")] == ["firegrid/b1/sd-1/telemetry"]


def test_simulator_publishes_as_any_device_but_never_as_a_gateway(clients) -> None:
    watcher = clients("gateway")
    watcher.subscribe("firegrid/#")
    sim = clients("sim")
    assert sim.publish("firegrid/_gateway/gw-1/status", b"offline") == NOT_AUTHORIZED
    assert sim.publish("firegrid/b1/sd-2/telemetry", b'{"alarm": false}') == 0
    assert sim.publish("firegrid/b2/ht-9/event", b'{"type": "test"}') == 0
    got = drain(watcher, "firegrid/b2/ht-9/event")
    assert [t for t, _ in got] == ["firegrid/b1/sd-2/telemetry", "firegrid/b2/ht-9/event"]


# --- end to end through `firegrid run` ------------------------------------------------------------------------------


@pytest.fixture
def gateway_run(tmp_path: Path, broker: MosquittoServer, influx) -> Iterator[str]:
    """``firegrid run`` as the ACL's gateway user (MQTT v5) against the ACL broker, writing to a real InfluxDB."""
    import urllib.request

    from testkit.services import free_port

    port = free_port()
    config = {
        **CONFIG,
        "mqtt": {**CONFIG["mqtt"], "url": broker.url},
        "influx": {
            "url": influx.url,
            "api": "v1",
            "database": influx.database,
            "spool_dir": str(tmp_path / "spool"),
            "flush_interval_s": 0.1,
        },
        "store": {"path": str(tmp_path / "gateway.sqlite")},
        "http": {"listen": f"127.0.0.1:{port}"},
        "log": {"format": "text", "level": "info"},
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "gateway.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIREGRID_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.tools.cli", "run", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def ready() -> bool:
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=30, what="firegrid run /readyz")
        yield str(tmp_path / "gateway.log")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, (tmp_path / "gateway.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()


def test_spoofed_publish_never_reaches_influxdb_through_firegrid_run(clients, gateway_run, influx) -> None:
    device = clients("sd-1", v5=False)  # 3.1.1: the broker PUBACKs the denied publish as if it were fine
    assert device.publish("firegrid/b1/sd-2/telemetry", b'{"obscuration": 9.0, "seq": 1}') == 0
    assert device.publish("firegrid/b1/sd-1/telemetry", b'{"obscuration": 0.4, "seq": 7}') == 0
    # Control: sd-2's topic is ingested when someone allowed publishes on it, so its absence is the ACL's doing.
    assert clients("sim").publish("firegrid/b1/sd-2/telemetry", b'{"obscuration": 1.5, "seq": 2}') == 0

    def rows() -> list[dict]:
        return influx.rows('SELECT "obscuration", "device" FROM "smoke"')

    wait_for(lambda: len(rows()) >= 2, timeout=30, what="both legitimate readings in InfluxDB")
    got = sorted((row["device"], row["obscuration"]) for row in rows())
    assert got == [("sd-1", 0.4), ("sd-2", 1.5)]  # never ("sd-2", 9.0)
