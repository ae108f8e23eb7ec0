"""Cluster mode's catch-all for publishes that escaped the broker's partition mapping (docs/cluster.md, finding 1).

NATS sometimes publishes a device's first QoS 1 PUBLISH, sent before its CONNACK, under the device's own topic instead
of the mapped ``fgp/<NN>/…``; it acknowledges it to the device, and no partition session would ever see it.  One
gateway (the owner of this catch-all, by lease like a partition) holds the persistent session ``firegrid-unmapped``
on ``<prefix>/+/+/+``, where the mapping leaves only those escapes, and re-publishes each at QoS 1 with its retain
flag on a separate long-lived connection (published after that connection's CONNACK, so the mapping applies and the
copy lands in its building's partition).  The original is acknowledged only after the broker's PUBACK for the copy:
if this gateway dies in between, the escape comes again (to the next owner, after ``ack_wait``) and the copy may be
published twice, which the pipeline's dedup by ``(device, seq)`` absorbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

import aiomqtt

from gateway.config import MqttConfig
from gateway.ingest.mqtt import Incoming, MqttIngest, MqttUnavailable
from gateway.metrics import Metrics

log = logging.getLogger("firegrid.unmapped")

UNMAPPED_CLIENT_ID = "firegrid-unmapped"
UNMAPPED_LANE = -1  # never reaches the pipeline; its acknowledgements are this module's own
PUBLISH_TIMEOUT_S = 15.0  # above the broker's 5-10 s stall when its stream leader dies (docs/cluster.md, finding 2)
CLOSE_TIMEOUT_S = 10.0

Publish = Callable[[str, bytes, bool], Awaitable[None]]
"""``publish(topic, payload, retain)``: returns once the broker has acknowledged (PUBACK) a QoS 1 copy."""


class CopyFailed(Exception):
    """The re-published copy was not acknowledged by the broker (retried; the original stays unacknowledged)."""


class Republisher:
    """A long-lived MQTT 3.1.1 connection (clean session, a client id of its own per process) for the copies.

    Its own id per process: it holds no session state, and two gateways' publishers must never take each other's
    connection over the way a partition's owners do."""

    def __init__(self, *, config: MqttConfig, urls: Sequence[str], client_id: str) -> None:
        self._configs = [config.model_copy(update={"url": url}) for url in urls] or [config]
        self._next = 0
        self.client_id = f"{client_id}-pub-{uuid.uuid4().hex[:8]}"
        self._client: aiomqtt.Client | None = None

    async def _connected(self) -> aiomqtt.Client:
        client = self._client
        if client is not None and not client._disconnected.done():
            return client
        await self.close()
        config = self._configs[self._next % len(self._configs)]
        self._next += 1  # a node that failed is not asked first again
        password = config.password.get_secret_value() if config.password is not None else None
        client = aiomqtt.Client(
            config.host,
            config.port,
            username=config.username,
            password=password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=config.keepalive_s,
            timeout=10,
        )
        try:
            await client.__aenter__()  # returns after the CONNACK: from here on the mapping applies
        except aiomqtt.MqttError as exc:
            raise CopyFailed(f"cannot connect to {config.host}:{config.port}: {exc}") from exc
        self._client = client
        return client

    async def publish(self, topic: str, payload: bytes, retain: bool) -> None:
        client = await self._connected()
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=PUBLISH_TIMEOUT_S)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            await self.close()
            raise CopyFailed(f"no PUBACK for the copy of {topic[:200]}: {exc}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5)


class UnmappedCatchAll:
    """``open()`` / ``close()`` like a partition (its owner holds a lease on it too).

    ``publish`` replaces the copy's connection (tests hold a copy back to show the original stays unacknowledged);
    ``owns()`` is asked before every reconnect of the session, as for a partition."""

    def __init__(
        self,
        *,
        config: MqttConfig,
        metrics: Metrics,
        urls: Sequence[str] | None = None,
        client_id: str = UNMAPPED_CLIENT_ID,
        publish: Publish | None = None,
        owns: Callable[[], bool] | None = None,
        backoff_max_s: float = 5.0,
    ) -> None:
        self.config = config.model_copy(update={"protocol": "v311", "qos": 1, "buildings": None, "shared_group": None})
        self.metrics = metrics
        self.client_id = client_id
        self._urls = list(urls) if urls else [config.url]
        self._republisher = Republisher(config=self.config, urls=self._urls, client_id=client_id)
        self._publish: Publish = publish or self._republisher.publish
        self._owns = owns
        self._backoff_max_s = backoff_max_s
        self._session: MqttIngest | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue()
        self._pending: set[tuple[int, int]] = set()  # (generation, mid) queued or being copied
        self._generation = 0
        self.republished = 0
        self.acknowledged = 0

    @property
    def topic_filter(self) -> str:
        return f"{self.config.topic_prefix}/+/+/+"

    @property
    def is_open(self) -> bool:
        return self._session is not None

    @property
    def session(self) -> MqttIngest | None:
        return self._session

    async def open(self, *, connect_timeout_s: float | None = 30.0) -> None:
        if self._session is None:
            self._queue = asyncio.Queue()
            self._pending = set()
            session = MqttIngest(
                config=self.config,
                metrics=self.metrics,
                on_message=self._received,
                backoff_max_s=self._backoff_max_s,
                lane=UNMAPPED_LANE,
                client_id=self.client_id,
                topics=[self.topic_filter],
                urls=self._urls,
                may_reconnect=lambda: self._session is session and (self._owns is None or self._owns()),
                generation=self._generation,
            )
            self._session = session
            self._tasks = [
                asyncio.create_task(session.run(), name="unmapped-session"),
                asyncio.create_task(self._copy_loop(session), name="unmapped-copies"),
            ]
        session = self._session
        connected = asyncio.ensure_future(session.wait_connected())
        try:
            await asyncio.wait(
                {connected, self._tasks[0]}, timeout=connect_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            connected.cancel()
        if not session.connected:
            raise MqttUnavailable(
                f"{self.client_id}: no broker node answered within {connect_timeout_s}s ({session.last_error})"
            )

    async def close(self) -> None:
        """Disconnect WITHOUT acknowledging what is pending (the next owner gets it); never reconnects."""
        session, self._session = self._session, None
        if session is None:
            return
        session.stop()
        session.resume()
        tasks, self._tasks = self._tasks, []
        tasks[1].cancel()  # a copy in progress: its original stays unacknowledged
        with contextlib.suppress(BaseException):
            await tasks[1]
        try:
            await asyncio.wait_for(asyncio.shield(tasks[0]), CLOSE_TIMEOUT_S)
        except TimeoutError:
            tasks[0].cancel()
            with contextlib.suppress(BaseException):
                await tasks[0]
        except Exception:
            log.exception("%s: session ended with an error", self.client_id)
        self._generation = session.generation + 1
        await self._republisher.close()

    def _received(self, message: Incoming) -> None:
        key = (message.generation, message.mid)
        if message.qos and key in self._pending:
            return  # redelivered (ack_wait) while its copy is still on its way: that copy's PUBACK answers both
        if message.qos:
            self._pending.add(key)
        self._queue.put_nowait(message)

    async def _copy_loop(self, session: MqttIngest) -> None:
        attempt = 0
        while True:
            message = await self._queue.get()
            while True:
                try:
                    await self._publish(message.topic, message.payload, message.retain)
                    break
                except (CopyFailed, MqttUnavailable, aiomqtt.MqttError, OSError) as exc:
                    delay = min(self._backoff_max_s, 0.25 * 2**attempt)
                    attempt += 1
                    log.warning("copy of an unmapped publish failed (%s); retrying in %.1f s", exc, delay)
                    await asyncio.sleep(delay)
            attempt = 0
            self.republished += 1
            self.metrics.unmapped.inc()
            if message.qos:
                # only now: the copy is in the broker's replicated store, in its partition
                self.acknowledged += session.ack([(message.generation, message.mid)])
                self._pending.discard((message.generation, message.mid))
            log.info("re-published an unmapped publish on %s into its partition", message.topic[:200])
