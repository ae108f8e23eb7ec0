"""The MQTT side of the gateway: a supervised aiomqtt connection with a persistent session and MANUAL
acknowledgement.

aiomqtt 2.x acknowledges a QoS 1 message before the application sees it (and queues without bound), which would
lose every message in flight when the gateway crashes.  Until aiomqtt exposes manual acknowledgement we reach the
paho-mqtt client it wraps (``client._client``): ``manual_ack_set(True)`` before connecting, and ``ack(mid, qos)`` once
the message is durably handed off (see ``gateway/ingest/pipeline.py``).  For the same reason we install our own
``on_message`` on the paho client: it hands the raw message to the pipeline without aiomqtt's per-message
``Message``/``Topic`` objects (aiomqtt's measurable cost per message).

Message ids are per connection.  Every connection gets a new *generation*; an acknowledgement for a message from an
older generation is skipped (the broker redelivers it on the new connection; it is processed again, which is
idempotent downstream).

Flow control: the broker limits unacknowledged messages per client (MQTT v5 Receive Maximum, which we send as
``mqtt.max_inflight``; Mosquitto's ``max_inflight_messages`` for 3.1.1).  Measured on Mosquitto 2.0.11
(docs/gateway.md): the limit holds only until the first PUBACK; after that each PUBACK can release a whole window.
So the gateway bounds its own inbox too: above a high-water mark it stops reading the socket (TCP back-pressure
onto the broker, which queues for the persistent session) and resumes below the low-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import select
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import MqttConfig
from gateway.ingest import paho_speedups
from gateway.ingest.contract import Rejected
from gateway.ingest.filter_ledger import FilterLedger
from gateway.metrics import Metrics

log = logging.getLogger("firegrid.mqtt")

CHANNELS = ("telemetry", "event", "status")
# The fast lane (``mqtt.event_lane``): a second persistent session, client id ``<client_id>-events``, subscribed to the
# event channel only, so that the broker queues a detector's alarm behind no telemetry; the main session then holds
# telemetry and status.
EVENT_CHANNELS = ("event",)
MAIN_CHANNELS = ("telemetry", "status")
EVENT_LANE_SUFFIX = "-events"
_READ_BURST = 1000  # packets handled per socket-readable event
# While reading a slice, every this many packets the reader asks ``MqttIngest.urgent`` whether to stop early.
_URGENT_EVERY = 32


_RECV_CHUNK = 65536  # bytes per socket read of the buffered receive


class _BufferedRecv:
    """paho's ``_sock_recv`` for one client, served from a buffer filled by large socket reads.

    paho reads each packet with three or four ``recv`` calls (its command byte, one per byte of the remaining
    length, then the rest): three or four system calls, each with paho's exception handling around it, per
    message.  This reads up to ``_RECV_CHUNK`` bytes at a time and hands paho what it asks for from them.  Bytes it
    holds are invisible to the event loop's readiness, so the reader comes back by itself while any are left
    (``pending``)."""

    __slots__ = ("_client", "_data", "_pos")

    def __init__(self, client: paho.Client) -> None:
        self._client = client
        self._data = b""
        self._pos = 0

    def __call__(self, bufsize: int) -> bytes:
        if self._pos >= len(self._data):
            sock = self._client._sock
            if sock is None:
                raise ConnectionError("self._sock is None")
            try:
                data = sock.recv(_RECV_CHUNK)
            except ssl.SSLWantReadError as err:
                raise BlockingIOError() from err
            except ssl.SSLWantWriteError as err:
                self._client._call_socket_register_write()
                raise BlockingIOError() from err
            if not data:
                return b""  # the broker closed the connection: paho's "connection lost"
            self._data, self._pos = data, 0
        start = self._pos
        self._pos = end = min(start + bufsize, len(self._data))
        return self._data[start:end]

    def pending(self) -> int:
        return len(self._data) - self._pos


class MqttUnavailable(Exception):
    """The broker could not be reached or refused the connection (retried by the supervisor)."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message as received: enough to decode it and to acknowledge it later.

    MQTT messages are acknowledged by ``(generation, mid)`` when ``qos`` is 1.  Another source (a UITD panel, an HTTP
    push) sets ``on_commit`` instead: the pipeline calls it once the group commit holding the message is durable,
    which is where that source sends its own acknowledgement (a GB/T 26875.3 confirm frame, an HTTP 2xx).
    """

    generation: int
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_ms: int
    on_commit: Callable[[Rejected | None], None] | None = None
    lane: int = 0  # which MQTT session the message came by: MAIN_LANE or EVENT_LANE (its mid is acknowledged there)
    retain: bool = False  # the PUBLISH's retain flag (the cluster's catch-all re-publishes with the same flag)


MAIN_LANE = 0
EVENT_LANE = 1


def subscriptions(config: MqttConfig, channels: tuple[str, ...] = CHANNELS) -> list[str]:
    """The gateway's topic filters: every building's, or with ``mqtt.buildings`` only those buildings'."""
    if config.buildings:
        topics = [f"{config.topic_prefix}/{b}/+/{channel}" for b in config.buildings for channel in channels]
    else:
        topics = [f"{config.topic_prefix}/+/+/{channel}" for channel in channels]
    if config.shared_group:
        topics = [f"$share/{config.shared_group}/{t}" for t in topics]
    return topics


def status_topic(config: MqttConfig) -> str:
    return f"{config.topic_prefix}/_gateway/{config.client_id}/status"


def _write_registration(wrapper: aiomqtt.Client) -> paho.CallbackOnSocket:
    """paho's ``on_socket_register_write`` for ``wrapper``'s client, in place of aiomqtt's.

    aiomqtt 2.5 defers every registration: ``call_soon_threadsafe(loop.add_writer, sock.fileno(), ...)``, so the
    descriptor number is read when paho asks and used one loop iteration later.  A PUBACK queued in the iteration in
    which the broker's connection drops (a group commit finishing as Mosquitto is killed; ``tests/
    test_mqtt_socket_close.py``) lets the reader close the socket in between, and the deferred ``add_writer`` then
    hits a closed descriptor (the loop logs "Exception in callback BaseSelectorEventLoop.add_writer(...)", OSError
    EBADF) or, had another thread been given the number meanwhile, puts a writer on someone else's descriptor.  Only
    paho's ``connect()`` asks from another thread (aiomqtt runs it in an executor); on the loop thread the writer is
    registered at once, and a deferred registration is dropped if paho no longer holds that socket.
    """
    loop = asyncio.get_running_loop()
    loop_thread = threading.get_ident()

    def writable(client: paho.Client) -> None:
        try:
            client.loop_write()
        except Exception as exc:  # a broken socket, as in aiomqtt's own writer: let the supervisor reconnect
            if not wrapper._disconnected.done():
                wrapper._disconnected.set_exception(exc)

    def add_writer(client: paho.Client, sock: paho.SocketLike) -> None:
        current = client.socket()
        if current is None or current is not sock:
            return  # closed since paho asked: nothing to write to, and its number may already be someone else's
        loop.add_writer(current.fileno(), writable, client)

    def register(client: paho.Client, _userdata: Any, sock: paho.SocketLike) -> None:  # paho's userdata is Any
        if threading.get_ident() == loop_thread:
            add_writer(client, sock)
        else:
            loop.call_soon_threadsafe(add_writer, client, sock)

    return register


def _tls_context(config: MqttConfig) -> ssl.SSLContext | None:
    if not config.use_tls:
        return None
    tls = config.tls
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls and tls.ca_file else None)
    if tls and tls.cert_file and tls.key_file:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls and tls.insecure:
        context.check_hostname = False
    return context


class MqttIngest:
    """Connects, subscribes, feeds ``on_message``; reconnects forever with capped, jittered backoff."""

    # Set by the service on the main session when there is a fast lane: True while something more urgent than this
    # session's telemetry waits for the event loop (the fast lane's socket has data, an alarm waits for stage 1).
    # The reader then ends its slice early (every ``_URGENT_EVERY`` packets it asks), instead of holding the loop
    # for up to ``_READ_BURST`` packets; idle, the full slices keep ingest's throughput.
    urgent: Callable[[], bool] | None = None

    def __init__(
        self,
        *,
        config: MqttConfig,
        metrics: Metrics,
        on_message: Callable[[Incoming], None],
        high_water: int | None = None,
        backoff_max_s: float = 30.0,
        ledger: FilterLedger | None = None,
        channels: tuple[str, ...] = CHANNELS,
        lane: int = MAIN_LANE,
        client_id: str | None = None,
        topics: Sequence[str] | None = None,
        topic_rewrite: Callable[[str], str | None] | None = None,
        urls: Sequence[str] | None = None,
        may_reconnect: Callable[[], bool] | None = None,
        generation: int = 0,
    ) -> None:
        """``lane=EVENT_LANE`` is the fast lane's session: it connects as ``<client_id>-events`` to ``channels``,
        publishes no gateway status of its own and leaves the link metrics and ``on_link`` to the main session.

        Cluster mode's partition sessions (gateway/ingest/partitions.py) use the other hooks: ``client_id`` as is
        (no suffix, no will, no status: not the main session), ``topics`` in place of the channel filters,
        ``topic_rewrite`` from the broker's topic to the one handed on (None: acknowledged at once and dropped; the
        rewrite counts why), ``urls`` of the broker's nodes, tried in turn when one refuses or drops the connection,
        ``may_reconnect`` asked before every reconnect (False ends :meth:`run`), and the first ``generation`` (a
        session reopened in the same process must not take acknowledgements meant for its predecessor)."""
        if client_id is not None:
            config = config.model_copy(update={"client_id": client_id})
        elif lane != MAIN_LANE:
            config = config.model_copy(update={"client_id": f"{config.client_id}{EVENT_LANE_SUFFIX}"})
        # every node of a cluster can serve any session: the same settings, one URL each
        self._endpoints = [config.model_copy(update={"url": url}) for url in urls] if urls else [config]
        self._endpoint = 0
        self.config = self._endpoints[0]
        self._channels = channels
        self._lane = lane
        self._primary = lane == MAIN_LANE and client_id is None
        self._topics = list(topics) if topics is not None else None
        self._rewrite = topic_rewrite
        self._may_reconnect = may_reconnect
        self._ledger = ledger
        self.metrics = metrics
        self._on_message = on_message
        self.generation = generation
        self.connected = False
        self.connections = 0
        self._client: aiomqtt.Client | None = None
        self._paho: paho.Client | None = None
        self._stopping = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._paused = False
        self.high_water = high_water or max(4 * config.max_inflight, 2000)
        self.low_water = self.high_water // 2
        self._backoff_max_s = backoff_max_s
        self.last_error: str | None = None
        # Called with True once subscribed, False when the link is lost: the service pauses the rules engine's
        # absence timers while the gateway itself is deaf, so a broker outage is not mistaken for every device
        # in the district going silent at once (an SMS storm).
        self.on_link: Callable[[bool], None] | None = None

    # --- the supervisor --------------------------------------------------------------------------------------

    async def run(self) -> None:
        if self.config.shared_group:
            log.warning(
                "mqtt.shared_group %r: the broker spreads each device's and each building's messages over the group, "
                "so durations, rates of rise and multi-sensor fire confirmation see only part of them "
                "(docs/gateway.md); split a district by building instead",
                self.config.shared_group,
            )
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._session()
                attempt = 0
            except (aiomqtt.MqttError, MqttUnavailable, OSError) as exc:
                self.last_error = str(exc)
                if self._stopping.is_set():
                    break
                if self.connected:
                    # The link was up: this is a new outage, so the backoff starts again from its base; carried
                    # over, every broker restart waited longer while alarms queued there (docs/reliability.md).
                    attempt = 0
                delay = min(self._backoff_max_s, 0.25 * 2**attempt) * (0.5 + random.random() / 2)
                attempt += 1
                # Reconnects are routine (broker restarts, network blips): info, not error.
                log.info("MQTT connection lost or refused (%s); reconnecting in %.1f s", exc, delay)
            finally:
                self._mark_disconnected()
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay if attempt else 0.05)
            if self._may_reconnect is not None and not self._stopping.is_set() and not self._may_reconnect():
                # a partition whose lease is gone: reconnecting would take its session back from the new owner
                log.info("MQTT session %s not reconnected: no longer ours", self.config.client_id)
                break

    def _mark_disconnected(self) -> None:
        if self.connected and self.on_link is not None:
            self.on_link(False)
        if self._paho is not None:
            self.generation += 1  # acknowledgements of the old connection's message ids are now void
        self.connected = False
        self._connected_event.clear()
        self._paused = False
        if self._primary:
            self.metrics.mqtt_connected.set(0)
        self._client = None
        self._paho = None

    def _build(self) -> aiomqtt.Client:
        c = self.config
        v5 = c.protocol == "v5"
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # unannotated in paho
            properties.SessionExpiryInterval = c.session_expiry_s
            # Receive Maximum: how many unacknowledged QoS 1 messages the broker may send us at once.  With late
            # acknowledgement this is the window a group commit can fill (docs/gateway.md).
            properties.ReceiveMaximum = c.max_inflight
        if v5:
            paho_speedups.install()  # a cheaper decoding of each incoming PUBLISH's properties
        password = c.password.get_secret_value() if c.password is not None else None
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=password,
            identifier=c.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            clean_start=False if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
            keepalive=c.keepalive_s,
            will=aiomqtt.Will(status_topic(c), b"offline", qos=1, retain=True) if self._primary else None,
            tls_context=_tls_context(c),
            tls_insecure=bool(c.tls and c.tls.insecure) if c.use_tls else None,
            timeout=10,
        )
        inner: paho.Client = client._client
        inner.manual_ack_set(True)
        inner.on_socket_register_write = _write_registration(client)  # aiomqtt's races a closing socket
        generation = self.generation
        deliver = self._on_message
        lane = self._lane

        def on_message(_client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
            deliver(
                Incoming(
                    generation=generation,
                    mid=message.mid,
                    qos=message.qos,
                    topic=message.topic,
                    payload=bytes(message.payload),
                    received_ms=int(time.time() * 1000),
                    lane=lane,
                    retain=bool(message.retain),
                )
            )

        inner.on_message = on_message if self._rewrite is None else self._rewriting(generation)
        return client

    def _rewriting(self, generation: int) -> Callable[[paho.Client, Any, paho.MQTTMessage], None]:
        """paho's ``on_message`` with ``topic_rewrite`` applied (kept apart: the main session's path is unchanged)."""
        rewrite = self._rewrite
        assert rewrite is not None
        deliver = self._on_message
        lane = self._lane

        def on_message(client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
            topic = rewrite(message.topic)
            if topic is None:
                if message.qos:
                    client.ack(message.mid, 1)  # refused for good: a redelivery would be refused again
                return
            deliver(
                Incoming(
                    generation=generation,
                    mid=message.mid,
                    qos=message.qos,
                    topic=topic,
                    payload=bytes(message.payload),
                    received_ms=int(time.time() * 1000),
                    lane=lane,
                    retain=bool(message.retain),
                )
            )

        return on_message

    def _catch_all(self) -> list[str]:
        """The whole district's filters, which a partitioned gateway's session may hold from before it was."""
        if not self.config.buildings:
            return []
        return subscriptions(self.config.model_copy(update={"buildings": None}), self._channels)

    async def _session(self) -> None:
        client = self._build()
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            failed = self.config
            if len(self._endpoints) > 1:  # any node can serve: the next one on the next attempt
                self._endpoint = (self._endpoint + 1) % len(self._endpoints)
                self.config = self._endpoints[self._endpoint]
            raise MqttUnavailable(f"cannot connect to {failed.host}:{failed.port}: {exc}") from exc
        try:
            # Acknowledgements may flow from here on: a persistent session starts delivering right after CONNACK,
            # before our SUBSCRIBE is answered.  Holding back those acks would leave them in flight forever and
            # stall the session once Receive Maximum of them pile up.
            self._client = client
            self._paho = client._client
            self._install_reader()
            wanted = self._topics if self._topics is not None else subscriptions(self.config, self._channels)
            stale = self._ledger.subscribing(wanted, catch_all=self._catch_all()) if self._ledger else []
            await client.subscribe([(topic, int(self.config.qos)) for topic in wanted])
            if stale:
                # only now: in between, the old and the new filters overlap (duplicates, which dedup absorbs)
                # instead of leaving a gap in which an owned building's message would match nothing
                await client.unsubscribe(stale)
                assert self._ledger is not None
                self._ledger.unsubscribed(stale)
                log.info(
                    "MQTT: unsubscribed %d topic filters this gateway no longer owns (%s%s)",
                    len(stale),
                    ", ".join(stale[:4]),
                    ", ..." if len(stale) > 4 else "",
                )
            if self._primary:
                await client.publish(status_topic(self.config), b"online", qos=1, retain=True)
            self.connected = True
            if self.on_link is not None:
                self.on_link(True)
            self._connected_event.set()
            self.connections += 1
            if self._primary:
                self.metrics.mqtt_connected.set(1)
            if self.connections > 1:
                if self._primary:
                    self.metrics.reconnects.inc()
                log.info("MQTT reconnected to %s:%d and re-subscribed", self.config.host, self.config.port)
            else:
                log.info(
                    "MQTT connected to %s:%d as %s (%s, persistent session, QoS %d)",
                    self.config.host,
                    self.config.port,
                    self.config.client_id,
                    self.config.protocol,
                    self.config.qos,
                )
            stop: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
            disconnected: asyncio.Future[Any] = client._disconnected
            try:
                await asyncio.wait({stop, disconnected}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if disconnected.done():
                cause = disconnected.exception()
                raise MqttUnavailable(str(cause) if cause else "disconnected by the broker")
        finally:
            if self._primary and self._stopping.is_set() and not client._disconnected.done():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.publish(status_topic(self.config), b"offline", qos=1, retain=True), 2)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5)

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    def stop(self) -> None:
        self._stopping.set()

    # --- acknowledgement and flow control ----------------------------------------------------------------------

    def ack(self, items: list[tuple[int, int]]) -> int:
        """Acknowledge ``(generation, mid)`` pairs of QoS 1 messages; returns how many were sent."""
        client = self._paho
        if client is None:
            return 0
        generation = self.generation
        sent = 0
        for item_generation, mid in items:
            if item_generation == generation:
                client.ack(mid, 1)
                sent += 1
        return sent

    def pause(self) -> None:
        """Stop reading the socket: the broker keeps the messages (TCP back-pressure, then its session queue)."""
        client = self._paho
        if self._paused or client is None:
            return
        sock = client.socket()
        if sock is None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._paused = True

    def resume(self) -> None:
        if not self._paused:
            return
        self._paused = False
        self._install_reader()

    def _install_reader(self) -> None:
        """Replace aiomqtt's socket reader with one that drains every complete packet the socket holds.

        aiomqtt's reader calls paho's ``loop_read()``, which handles ONE packet per call when nothing is in flight
        outwards (paho ignores its ``max_packets`` argument), so every message costs a full event-loop iteration
        and an epoll.  Reading up to ``_READ_BURST`` packets per readiness event is what lets group commits grow.
        ``_packet_read`` is paho's internal per-packet step (the body of ``loop_read``); it returns
        ``MQTT_ERR_AGAIN`` when the socket has nothing more.
        """
        client = self._paho
        wrapper = self._client
        if client is None or wrapper is None or self._paused:
            return
        sock = client.socket()
        if sock is None:
            return

        recv = client._sock_recv
        if not isinstance(recv, _BufferedRecv):  # once per client: a resumed reader keeps the bytes it had
            recv = client._sock_recv = _BufferedRecv(client)  # type: ignore[method-assign]  # paho's per-read hook
        filtered = client._on_message_filtered

        def handle_on_message(message: paho.MQTTMessage) -> None:
            """paho's dispatch without its per-message walk of the topic-filter tree (3-4 % of a burst's loop time
            in py-spy) when no per-filter callback is registered (the gateway registers none; aiomqtt neither)."""
            if filtered._root._children:
                paho.Client._handle_on_message(client, message)
                return
            on_message = client.on_message
            if on_message is not None:
                on_message(client, client._userdata, message)

        client._handle_on_message = handle_on_message  # type: ignore[method-assign]  # paho's own hook, per client

        loop = asyncio.get_running_loop()

        def read() -> None:
            urgent = self.urgent
            try:
                for n in range(1, _READ_BURST + 1):
                    if client._sock is None:
                        raise MqttUnavailable("socket closed")
                    if urgent is not None and not n % _URGENT_EVERY and urgent():
                        break  # the loop's other readers first; this socket (or the buffer) comes next
                    rc = client._packet_read()
                    if rc == paho.MQTT_ERR_AGAIN:
                        pending = getattr(client._sock, "pending", None)  # TLS: bytes decrypted but unread
                        if pending is not None and pending() > 0:
                            continue
                        return  # the buffer is empty and so is the socket: its readiness calls again
                    if rc > 0:
                        client._loop_rc_handle(rc)
                        raise MqttUnavailable(f"read failed: {paho.error_string(rc)}")
                if recv.pending():
                    # the slice ended with bytes in the buffer, which no readiness event announces: after the others
                    loop.call_soon(again)
            except Exception as exc:  # a broken socket: let the supervisor reconnect
                if not wrapper._disconnected.done():
                    wrapper._disconnected.set_exception(exc)

        def again() -> None:
            if not self._paused and self._paho is client:  # paused meanwhile: resume() reads the buffer first
                read()

        loop.add_reader(sock.fileno(), read)  # replaces aiomqtt's reader for this fd
        read()  # bytes may already be buffered

    @property
    def paused(self) -> bool:
        return self._paused

    def has_input(self) -> bool:
        """Bytes wait in this session's socket (a zero-timeout poll, a few microseconds; False while paused)."""
        client = self._paho
        if client is None or self._paused:
            return False
        sock = client._sock
        if sock is None:
            return False
        recv = client._sock_recv
        if isinstance(recv, _BufferedRecv) and recv.pending():
            return True
        pending = getattr(sock, "pending", None)  # TLS: bytes decrypted but unread
        if pending is not None and pending() > 0:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):  # closed meanwhile: the reader reports it
            return False
        return bool(readable)
