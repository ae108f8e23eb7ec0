"""The GB/T 26875.3 TCP listener: fire alarm panels' UITDs (用户信息传输装置) connect, send frames, get answers.

* Each connection has its own :class:`~gateway.ingest.uitd.FrameReader`; framing errors (``bad_checksum``,
  ``bad_length``, ``truncated``, ``oversized``, ``no_start``, ``bad_end``) are rejections with that reason, counted
  and listed like MQTT's, and the reader resynchronises so the next good frame still counts.
* A send-data frame whose part status objects map to devices becomes telemetry messages for the pipeline; its
  **confirm goes back only after the group commit** holding all of them (the same rule as MQTT's PUBACK).  A crash
  before that leaves the frame unconfirmed and the UITD sends it again.  Frames with nothing to commit (heartbeats,
  system state, operating records, unmapped parts) are confirmed at once.
* A request for the time (type 88 or 90) is answered with the gateway's clock; on a UITD's first frame the gateway
  also sets its clock (type 90), since every time stamp the panel sends is read in ``uitd.timezone``.
* A frame from a UITD address not in ``uitd.panels`` is denied and counted (``unknown_panel``).
* Limits: ``max_connections`` (more are closed at once), ``max_frame_bytes``, ``idle_timeout_s`` (a connection silent
  that long is closed; a UITD sends a heartbeat every 20-30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.config import UitdConfig
from gateway.ingest.contract import Reason, Rejected
from gateway.ingest.mqtt import Incoming
from gateway.ingest.rejections import Rejections
from gateway.ingest.uitd import (
    MAX_APP_DATA_LEN,
    ApplicationUnit,
    Command,
    Frame,
    FrameError,
    FrameReader,
    SyncTime,
    UitdTime,
    UnitType,
    encode_frame,
    make_confirm,
    make_deny,
    make_response,
    make_time_sync,
)
from gateway.ingest.uitd_map import PanelMap
from gateway.metrics import Metrics

log = logging.getLogger("firegrid.uitd")

_READ_CHUNK = 4096
# Frames of one connection handed to the pipeline and not yet confirmed: past this the connection is not read until
# confirms go out (TCP back-pressure onto the UITD, as the MQTT reader pauses above its high-water mark).  A UITD waits
# for each confirm before its next frame, so only a misbehaving sender ever gets here.
MAX_UNCONFIRMED = 64


def _reason(codec_reason: str) -> Reason:
    try:
        return Reason(codec_reason)  # the codec's framing reasons are rejection reasons of the same name
    except ValueError:
        return Reason.WRONG_SHAPE


@dataclass(slots=True)
class _Session:
    writer: asyncio.StreamWriter
    peer: str
    synced: set[int] = field(default_factory=set)
    unconfirmed: int = 0
    drained: asyncio.Event = field(default_factory=asyncio.Event)


_TIME_REQUESTS = (UnitType.READ_UITD_TIME, UnitType.SYNC_UITD_TIME)


class UitdServer:
    def __init__(
        self,
        *,
        config: UitdConfig,
        prefix: str,
        submit: Callable[[Incoming], None],
        rejections: Rejections,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._map = PanelMap(config=config, prefix=prefix)
        self._submit = submit
        self._rejections = rejections
        self._metrics = metrics
        self._clock = clock
        self._tz = ZoneInfo(config.timezone)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._serial = 0
        self.port: int | None = None
        self.frames = 0

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.config.host, self.config.port)
        sockets = self._server.sockets or ()
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("UITD (GB/T 26875.3) on %s:%s, %d panels", self.config.host, self.port, len(self.config.panels))

    def stop_listening(self) -> None:
        """Take no new connections (shutdown); open ones stay until :meth:`close`, so pending confirms can go out."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        self.stop_listening()
        for writer in list(self._writers):
            writer.close()
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    # --- one connection ----------------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _local_time(self) -> UitdTime:
        return UitdTime.from_datetime(datetime.fromtimestamp(self._clock(), tz=self._tz))

    def _reject(self, exc: Rejected, *, peer: str) -> None:
        self._rejections.record(exc, topic=f"uitd/{peer}", now_ms=self._now_ms())

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = writer.get_extra_info("peername")
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        if len(self._writers) >= self.config.max_connections:
            limit = self.config.max_connections
            self._reject(Rejected(Reason.TOO_MANY_CONNECTIONS, f"{peer}: over uitd.max_connections {limit}"), peer=peer)
            writer.close()
            return
        self._writers.add(writer)
        self._metrics.uitd_connections.set(len(self._writers))
        frames = FrameReader(max_frame_size=self.config.max_frame_bytes, max_app_data_len=MAX_APP_DATA_LEN)
        session = _Session(writer=writer, peer=peer)
        try:
            while True:
                if session.unconfirmed >= MAX_UNCONFIRMED:
                    session.drained.clear()
                    await session.drained.wait()
                try:
                    chunk = await asyncio.wait_for(reader.read(_READ_CHUNK), self.config.idle_timeout_s)
                except TimeoutError:
                    log.info("UITD %s silent for %.0f s: closing", peer, self.config.idle_timeout_s)
                    break
                items = frames.feed(chunk) if chunk else frames.close()
                for item in items:
                    if isinstance(item, FrameError):
                        self._reject(Rejected(_reason(item.reason), f"{peer}: {item.detail}"), peer=peer)
                        continue
                    try:
                        self._frame(item, session)
                    except Exception:
                        # one odd frame must not end the connection that the next alarm arrives on
                        log.exception("UITD %s: frame %d not handled", peer, item.serial)
                        detail = f"{peer}: frame {item.serial} could not be handled (internal error)"
                        self._reject(Rejected(Reason.WRONG_SHAPE, detail), peer=peer)
                if not chunk:
                    break
        except (ConnectionError, OSError) as exc:
            log.info("UITD %s connection lost: %s", peer, exc)
        finally:
            self._writers.discard(writer)
            self._metrics.uitd_connections.set(len(self._writers))
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _send(self, writer: asyncio.StreamWriter, frame: Frame) -> None:
        if writer.is_closing():
            return  # the UITD went away before its confirm: it sends the frame again when it reconnects
        writer.write(encode_frame(frame))

    def _next_serial(self) -> int:
        self._serial = (self._serial + 1) & 0xFFFF
        return self._serial

    def _frame(self, frame: Frame, session: _Session) -> None:
        writer, peer, synced = session.writer, session.peer, session.synced
        self.frames += 1
        self._metrics.uitd_frames.labels(frame.command_name.lower()).inc()
        panel = self._map.panel(frame.source)
        if frame.command in (Command.CONFIRM, Command.DENY, Command.RESPONSE):
            return  # answers to what we sent (the clock setting); nothing to do
        if panel is None:
            self._reject(
                Rejected(Reason.UNKNOWN_PANEL, f"{peer}: UITD address {frame.source} is not in uitd.panels"),
                peer=peer,
            )
            self._send(writer, make_deny(frame, time=self._local_time()))
            return
        if frame.source not in synced:
            synced.add(frame.source)
            self._send(
                writer,
                make_time_sync(
                    serial=self._next_serial(),
                    time=self._local_time(),
                    source=frame.destination,
                    destination=frame.source,
                    sync_to=self._local_time(),
                ),
            )
        unit = frame.unit
        if frame.command == Command.REQUEST:
            if isinstance(unit, ApplicationUnit) and unit.type_flag in _TIME_REQUESTS:
                now = self._local_time()
                answer = ApplicationUnit(type_flag=UnitType.SYNC_UITD_TIME, objects=(SyncTime(time=now),))
                self._send(writer, make_response(frame, time=now, unit=answer))
            else:
                self._send(writer, make_deny(frame, time=self._local_time()))
            return
        if frame.command != Command.SEND_DATA:
            self._send(writer, make_confirm(frame, time=self._local_time()))
            return
        meaning = self._map.meaning(frame, panel)
        for exc in meaning.rejected:
            self._reject(exc, peer=peer)
        if not meaning.messages:
            self._send(writer, make_confirm(frame, time=self._local_time()))
            return
        pending = len(meaning.messages)
        session.unconfirmed += 1

        def committed(_verdict: Rejected | None) -> None:
            # Called after the group commit; a rejected message is committed too (counted, nothing to keep).
            nonlocal pending
            pending -= 1
            if pending == 0:
                self._send(writer, make_confirm(frame, time=self._local_time()))
                session.unconfirmed -= 1
                if session.unconfirmed < MAX_UNCONFIRMED:
                    session.drained.set()

        received = self._now_ms()
        for message in meaning.messages:
            self._metrics.source_messages.labels("uitd").inc()
            self._submit(
                Incoming(
                    generation=0,
                    mid=0,
                    qos=0,
                    topic=message.topic,
                    payload=message.payload,
                    received_ms=received,
                    on_commit=committed,
                )
            )
