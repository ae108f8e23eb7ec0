"""A simulated UITD (GB/T 26875.3) in front of a fire alarm panel: connects over TCP, sends part status frames,
reads the monitoring centre's answers.  Used by tests and the bench against ``firegrid run``."""

from __future__ import annotations

import socket
import time
from datetime import datetime, timedelta, timezone

from gateway.ingest.uitd import (
    ApplicationUnit,
    Command,
    Frame,
    FrameReader,
    PartFlag,
    PartStatus,
    UitdTime,
    UnitType,
    build_frame,
    encode_description,
    encode_frame,
)

CST = timezone(timedelta(hours=8))
# Part status words, as plain ints, from the codec's table.
FIRE_ALARM = int(PartFlag.FIRE_ALARM)
FAULT = int(PartFlag.FAULT)
SUPERVISORY = int(PartFlag.SUPERVISORY)
POWER_FAULT = int(PartFlag.POWER_FAULT)
NORMAL = int(PartFlag.NORMAL)


def now_cst() -> UitdTime:
    return UitdTime.from_datetime(datetime.now(CST))


def part_status_frame(
    *,
    serial: int,
    source: int,
    parts: list[tuple[int, int, int, int, int]],
    description: str = "3层东走廊感烟",
    destination: int = 0x0000_0001_5B38,
) -> bytes:
    """A send-data frame of part status objects: ``parts`` are (system type, system address, part type, part
    address, status word)."""
    stamp = now_cst()
    objects = tuple(
        PartStatus(
            system_type=st,
            system_address=sa,
            part_type=pt,
            part_address=pa,
            status=status,
            raw_description=encode_description(description),
            time=stamp,
        )
        for st, sa, pt, pa, status in parts
    )
    unit = ApplicationUnit(type_flag=UnitType.PART_STATUS, objects=objects)
    return encode_frame(
        build_frame(
            serial=serial, time=stamp, source=source, destination=destination, command=Command.SEND_DATA, unit=unit
        )
    )


class Panel:
    """One TCP connection of a UITD."""

    def __init__(self, port: int, *, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=5)
        self.reader = FrameReader()
        self.frames: list[Frame] = []

    def send(self, raw: bytes) -> None:
        self.sock.sendall(raw)

    def _read(self, timeout: float) -> bool:
        self.sock.settimeout(max(0.01, timeout))
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self.frames.extend(item for item in self.reader.feed(chunk) if isinstance(item, Frame))
        return True

    def answer(self, serial: int, *, command: int = Command.CONFIRM, timeout: float = 10.0) -> Frame | None:
        """The centre's answer (``command``) to our frame ``serial``, or None if none came within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for frame in self.frames:
                if frame.serial == serial and frame.command == command:
                    return frame
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                return None

    def close(self) -> None:
        self.sock.close()
