"""Publishing simulated traffic to a real broker with paho-mqtt (directly, for throughput).

Two ways to connect, because one MQTT connection per device does not scale to a district from one process:

* :class:`PooledPublisher` (default): a few connections (``--connections``, default 4) carry every device's
  traffic.  A device always uses the same connection (chosen by a hash of its id), so its messages stay in order.
  An MQTT last will belongs to a connection, not a topic, so it cannot speak for thousands of devices: instead the
  simulation publishes each device's retained ``offline`` explicitly where its will would have fired (the
  ``disconnect`` scenario, and a clean stop).  If the simulator process is killed, nothing marks its devices
  offline; the gateway's heartbeat-absence rule notices them instead, as it would for devices losing power.
* :class:`DevicePublisher` (``--device-connections``, up to 2,000 devices): one connection per device with a real
  last will (retained ``offline``).  The ``disconnect`` scenario then drops the device's TCP connection without a
  DISCONNECT packet, and it is the broker that publishes the will.

QoS 1 publishes are bounded: at most ``max_inflight`` unacknowledged per connection (paho itself fails with
``ERR_QUEUE_SIZE`` past 65,535 of them).  A full window blocks the caller, which the load loop shows as a lower
rate rather than unbounded memory.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from simulators.sim import Message

WINDOW_TIMEOUT_S = 30.0


class PublishError(RuntimeError):
    """The broker could not be reached or refused the connection."""


@dataclass(frozen=True, slots=True)
class BrokerTarget:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    insecure: bool = False

    @classmethod
    def from_url(cls, url: str, *, username: str | None = None, password: str | None = None) -> BrokerTarget:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise PublishError(f"broker URL must be mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=username or parts.username,
            password=password or parts.password,
        )


def device_of(topic: str) -> str:
    parts = topic.split("/")
    return parts[2] if len(parts) > 2 else topic


@dataclass
class Stats:
    sent: int = 0
    acked: int = 0
    errors: int = 0
    disconnects: int = 0


class _Conn:
    """One paho client with a bounded window of unacknowledged publishes."""

    def __init__(
        self,
        target: BrokerTarget,
        client_id: str,
        *,
        max_inflight: int,
        stats: Stats,
        lock: threading.Lock,
        will_topic: str | None = None,
        keepalive: int = 30,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        if target.username:
            self.client.username_pw_set(target.username, target.password)
        if target.tls:
            context = ssl.create_default_context()
            if target.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self.client.tls_set_context(context)
        if will_topic is not None:
            self.client.will_set(will_topic, b"offline", qos=1, retain=True)
        self.window = threading.BoundedSemaphore(max_inflight)
        self.connected = threading.Event()
        self.refused: str | None = None
        self._stats = stats
        self._lock = lock
        self._target = target
        self._keepalive = keepalive
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        if getattr(rc, "is_failure", False):
            self.refused = str(rc)
        else:
            self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, rc: object, props: object) -> None:
        if self.connected.is_set():
            with self._lock:
                self._stats.disconnects += 1
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        with self._lock:
            self._stats.acked += 1
        with contextlib.suppress(ValueError):
            self.window.release()

    def start(self) -> None:
        try:
            # A synchronous first connect, so a wrong address fails at once instead of retrying in the background.
            self.client.connect(self._target.host, self._target.port, keepalive=self._keepalive)
        except OSError as exc:
            raise PublishError(f"cannot connect to {self._target.host}:{self._target.port}: {exc}") from None
        self.client.loop_start()

    def wait_connected(self, deadline: float) -> None:
        while not self.connected.wait(0.05):
            if self.refused:
                raise PublishError(f"broker refused the connection: {self.refused}")
            if time.monotonic() > deadline:
                raise PublishError(f"no CONNACK from {self._target.host}:{self._target.port}")

    def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool) -> bool:
        if not self.window.acquire(timeout=WINDOW_TIMEOUT_S):
            # The broker has acknowledged nothing for this long (it is down, or refuses us): count the message as
            # an error instead of blocking the simulation forever.
            with self._lock:
                self._stats.errors += 1
            return False
        try:
            info = self.client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError:  # paho refuses e.g. an oversize payload or a wildcard in the topic
            self.window.release()
            with self._lock:
                self._stats.errors += 1
            return False
        with self._lock:
            self._stats.sent += 1
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            return True
        if info.rc == mqtt.MQTT_ERR_NO_CONN and qos > 0:
            return True  # queued by paho, sent (and acknowledged) after the reconnect
        self.window.release()
        with self._lock:
            self._stats.errors += 1
        return False

    def drop(self) -> None:
        """Lose the connection without a DISCONNECT packet (the broker then publishes the last will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # TLS sockets too; the simulator never speaks MQTT over WebSockets
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self.connected.clear()

    def restore(self) -> None:
        with contextlib.suppress(OSError, mqtt.WebsocketConnectionError):
            self.client.reconnect()
        self.client.loop_start()

    def outstanding(self, max_inflight: int) -> int:
        return max_inflight - self.window._value

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()


class MqttPublisher(ABC):
    """A publisher over paho connections; what both kinds share: start the connections, wait for their
    acknowledgements, stop them."""

    def __init__(self, *, qos: int, max_inflight: int) -> None:
        self.qos = qos
        self.stats = Stats()
        self._lock = threading.Lock()
        self._max_inflight = max_inflight

    @abstractmethod
    def _all(self) -> Iterable[_Conn]: ...

    @abstractmethod
    def start(self, *, timeout: float) -> None: ...

    @abstractmethod
    def publish(self, message: Message) -> bool: ...

    @abstractmethod
    def drop(self, device: str) -> None:
        """Lose the device's connection without a DISCONNECT (where it has its own)."""

    @abstractmethod
    def restore(self, device: str) -> None: ...

    def _start_all(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for conn in self._all():
            conn.start()
        for conn in self._all():
            conn.wait_connected(deadline)

    def outstanding(self) -> int:
        return sum(c.outstanding(self._max_inflight) for c in self._all())

    def flush(self, *, timeout: float = 10.0) -> bool:
        """Wait until every QoS 1 publish is acknowledged (True) or the timeout passes (False)."""
        deadline = time.monotonic() + timeout
        while self.outstanding() > 0:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def stop(self) -> None:
        for conn in self._all():
            conn.stop()


class PooledPublisher(MqttPublisher):
    """Every device's traffic over a few connections."""

    def __init__(
        self,
        target: BrokerTarget,
        *,
        connections: int = 4,
        qos: int = 1,
        max_inflight: int = 1000,
        client_id: str = "firegrid-sim",
    ) -> None:
        super().__init__(qos=qos, max_inflight=max_inflight)
        self._conns = [
            _Conn(target, f"{client_id}-{i}", max_inflight=max_inflight, stats=self.stats, lock=self._lock)
            for i in range(max(1, connections))
        ]

    def _all(self) -> Iterable[_Conn]:
        return self._conns

    def start(self, *, timeout: float = 10.0) -> None:
        self._start_all(timeout)

    def _conn(self, topic: str) -> _Conn:
        return self._conns[zlib.crc32(device_of(topic).encode()) % len(self._conns)]

    def publish(self, message: Message) -> bool:
        return self._conn(message.topic).publish(message.topic, message.payload, qos=self.qos, retain=message.retain)

    def publish_raw(self, topic: str, payload: bytes, *, retain: bool = False) -> bool:
        return self._conn(topic).publish(topic, payload, qos=self.qos, retain=retain)

    def drop(self, device: str) -> None:  # pragma: no cover - pooled connections are shared
        pass

    def restore(self, device: str) -> None:  # pragma: no cover
        pass


class DevicePublisher(MqttPublisher):
    """One connection per device, each with a real retained ``offline`` last will."""

    LIMIT = 2000

    def __init__(
        self,
        target: BrokerTarget,
        *,
        devices: dict[str, str],  # device id -> its status topic
        qos: int = 1,
        max_inflight: int = 100,
        client_id: str = "firegrid-sim",
        keepalive: int = 10,
    ) -> None:
        if len(devices) > self.LIMIT:
            raise PublishError(
                f"--device-connections supports up to {self.LIMIT} devices ({len(devices)} given); use pooled "
                "connections for larger communities"
            )
        super().__init__(qos=qos, max_inflight=max_inflight)
        self._conns = {
            device: _Conn(
                target,
                f"{client_id}-{device}",
                max_inflight=max_inflight,
                stats=self.stats,
                lock=self._lock,
                will_topic=status_topic,
                keepalive=keepalive,
            )
            for device, status_topic in devices.items()
        }

    def _all(self) -> Iterable[_Conn]:
        return self._conns.values()

    def start(self, *, timeout: float = 30.0) -> None:
        self._start_all(timeout)

    def publish(self, message: Message) -> bool:
        conn = self._conns.get(device_of(message.topic))
        if conn is None:
            conn = next(iter(self._conns.values()))
        return conn.publish(message.topic, message.payload, qos=self.qos, retain=message.retain)

    def drop(self, device: str) -> None:
        conn = self._conns.get(device)
        if conn is not None:
            conn.drop()

    def restore(self, device: str) -> None:
        conn = self._conns.get(device)
        if conn is not None:
            conn.restore()
            conn.wait_connected(time.monotonic() + 10)
