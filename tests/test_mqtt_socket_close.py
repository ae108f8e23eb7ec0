"""A PUBACK queued in the same event-loop iteration in which the broker's connection drops (a group commit finishing
just as Mosquitto is SIGKILLed) must not reach the loop's exception handler, and the message must come again.

aiomqtt 2.5 registers paho's write interest with ``loop.call_soon_threadsafe(loop.add_writer, sock.fileno(), ...)``:
the descriptor number is read when paho asks and used one iteration later.  If the reader sees the broker's EOF in
between, paho closes the socket and the deferred ``add_writer`` hits a closed descriptor ("Exception in callback
BaseSelectorEventLoop.add_writer(...)", OSError EBADF), or, had the number been given out again meanwhile, registers
a writer on someone else's descriptor.  The test lines the two up deterministically: the broker is dead (its side
of the socket closed by the kernel) before the loop runs again, and the acknowledgement is the first callback of the
iteration whose ``select`` reports the EOF, ahead of the reader, as the pipeline's task step is in the gateway.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import pytest

from gateway.config import MqttConfig
from gateway.ingest.mqtt import Incoming, MqttIngest
from gateway.metrics import Metrics
from testkit.gateway import Publisher
from testkit.services import MosquittoServer

pytestmark = pytest.mark.timeout(60)

TOPIC = "firegrid/b01/d001/telemetry"


async def _until(predicate: Callable[[], Any], *, within: float, what: str) -> None:
    """Poll with a deadline without blocking the loop (the MQTT reader must keep running)."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.01)


async def _with_loop_errors(body: Callable[[list[dict[str, Any]]], Awaitable[None]]) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        await body(errors)
    finally:
        loop.set_exception_handler(previous)
    return errors


@pytest.mark.parametrize("protocol", ["v5", "v311"])
async def test_puback_queued_as_the_broker_is_killed(
    mosquitto: MosquittoServer, protocol: Literal["v5", "v311"]
) -> None:
    received: list[Incoming] = []
    ingest = MqttIngest(
        config=MqttConfig(url=mosquitto.url, client_id=f"socket-close-{protocol}", protocol=protocol),
        metrics=Metrics(),
        on_message=lambda message: received.append(message) if message.topic == TOPIC else None,
    )
    publisher = Publisher(mosquitto.port, client_id=f"socket-close-pub-{protocol}")
    marker = f"probe-{protocol}-{time.time_ns()}".encode()

    async def scenario(errors: list[dict[str, Any]]) -> None:
        loop = asyncio.get_running_loop()
        runner = asyncio.create_task(ingest.run())
        try:
            await asyncio.wait_for(ingest.wait_connected(), 10)
            publisher.publish(TOPIC, marker)
            await _until(lambda: received, within=10, what="the message at the gateway")
            first = received[0]
            # It must survive the SIGKILL: wait until Mosquitto has written it to its persistence file.
            database = mosquitto.workdir / "mosquitto.db"
            await _until(
                lambda: database.exists() and marker in database.read_bytes(), within=10, what="the broker to save it"
            )

            mosquitto.kill()  # returns once the process is gone: our socket has its EOF/RST waiting
            # First callback of the next iteration, ahead of the reader that will find the EOF (the pipeline acks
            # from a task step that way): paho queues the PUBACK and asks for write interest on a live socket,
            # then the reader closes that socket within the same iteration.
            loop.call_soon(ingest.ack, [(first.generation, first.mid)])
            await _until(lambda: not ingest.connected, within=10, what="the gateway to see the link drop")
            await asyncio.to_thread(mosquitto.start)

            # The PUBACK died with the socket: the restarted broker delivers the message again, on a new connection.
            await _until(lambda: ingest.connections >= 2, within=20, what="the gateway to reconnect")
            await _until(lambda: len(received) >= 2, within=20, what="the unacknowledged message again")
            again = received[1]
            assert again.payload == marker and again.generation > first.generation
            assert ingest.ack([(again.generation, again.mid)]) == 1

            # and the new session carries traffic both ways
            publisher.publish(TOPIC, b"after")
            await _until(lambda: len(received) >= 3, within=10, what="a message published after the restart")
            assert received[2].payload == b"after"
            assert ingest.ack([(received[2].generation, received[2].mid)]) == 1
            assert not errors, errors  # fail here, before shutdown adds anything
        finally:
            ingest.stop()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(runner, 10)

    try:
        errors = await _with_loop_errors(scenario)
    finally:
        publisher.client.loop_stop()
        publisher.client.disconnect()
    described = [f"{e.get('message')}: {e.get('exception')!r}" for e in errors]
    assert not errors, described
