"""GB/T 26875.3-2011 frames between a user information transmission device (UITD) and a monitoring centre.

Wire layout (byte offsets; multi-byte integers low byte first unless said otherwise; sources in docs/uitd.md)::

    0   2  start '@@' (0x40 0x40)
    2   2  serial number                 \\
    4   2  protocol version: major, minor |
    6   6  time: s, min, h, day, month, year-2000
    12  6  source address                 |  control unit (25 bytes)
    18  6  destination address            |
    24  2  application data length n      |
    26  1  command                       /
    27  n  application data (n <= 1024)
    27+n 1 checksum: sum mod 256 of bytes 2 .. 26+n (control unit and application data)
    28+n 2 end '##' (0x23 0x23)

Pure functions: nothing here reads a clock or a socket; times are passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from .errors import (
    BadChecksumError,
    BadEndError,
    BadLengthError,
    InvalidFieldError,
    NoStartError,
    TruncatedError,
)
from .objects import ApplicationUnit, RawUnit, SyncTime, UitdTime, UnitType, decode_app_data

__all__ = [
    "END",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "MAX_APP_DATA_LEN",
    "MAX_FRAME_SIZE",
    "START",
    "Command",
    "Frame",
    "build_frame",
    "checksum",
    "decode_frame",
    "encode_frame",
    "make_confirm",
    "make_deny",
    "make_response",
    "make_time_sync",
]

START = b"@@"
END = b"##"
#: Start marker + control unit up to and including the length field (the command byte follows).
HEADER_SIZE = 26
#: Bytes of a frame besides its application data: start 2 + control unit 25 + checksum 1 + end 2.
FRAME_OVERHEAD = 30
#: The standard's limit on the application data length.
MAX_APP_DATA_LEN = 1024
MAX_FRAME_SIZE = FRAME_OVERHEAD + MAX_APP_DATA_LEN
_ADDRESS_MAX = (1 << 48) - 1


class Command(IntEnum):
    """Command byte of the control unit (table 2). 0 and 7-127 are reserved, 128-255 user-defined."""

    CONTROL = 1
    SEND_DATA = 2
    CONFIRM = 3
    REQUEST = 4
    RESPONSE = 5
    DENY = 6


def checksum(data: bytes) -> int:
    """Arithmetic sum of ``data`` modulo 256 (the frame checksum over control unit + application data)."""
    return sum(data) & 0xFF


def _check(name: str, value: object, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise InvalidFieldError(f"Frame.{name} must be an int in 0..{hi}, got {value!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One frame. ``app_data`` is the authority for encoding; ``unit`` is its decoded form (derived, not compared).

    Addresses are the 6 address bytes read low byte first (so ``source.to_bytes(6, "little")`` is the wire form).
    """

    serial: int
    version_major: int
    version_minor: int
    time: UitdTime
    source: int
    destination: int
    command: int
    app_data: bytes = b""
    unit: ApplicationUnit | RawUnit | None = field(init=False, compare=False, repr=True)

    def __post_init__(self) -> None:
        _check("serial", self.serial, 0xFFFF)
        _check("version_major", self.version_major, 0xFF)
        _check("version_minor", self.version_minor, 0xFF)
        _check("source", self.source, _ADDRESS_MAX)
        _check("destination", self.destination, _ADDRESS_MAX)
        _check("command", self.command, 0xFF)
        if not isinstance(self.time, UitdTime):
            raise InvalidFieldError(f"Frame.time must be a UitdTime, got {type(self.time).__name__}")
        if not isinstance(self.app_data, bytes):
            raise InvalidFieldError(f"Frame.app_data must be bytes, got {type(self.app_data).__name__}")
        if len(self.app_data) > 0xFFFF:
            raise InvalidFieldError(f"application data of {len(self.app_data)} bytes does not fit the length field")
        object.__setattr__(self, "unit", decode_app_data(self.app_data))

    @property
    def command_name(self) -> str:
        try:
            return Command(self.command).name
        except ValueError:
            return "USER_DEFINED" if self.command >= 128 else "RESERVED"

    @property
    def source_bytes(self) -> bytes:
        return self.source.to_bytes(6, "little")

    @property
    def destination_bytes(self) -> bytes:
        return self.destination.to_bytes(6, "little")

    def control_unit(self) -> bytes:
        """The 25-byte control unit (serial number .. command byte)."""
        return (
            self.serial.to_bytes(2, "little")
            + bytes((self.version_major, self.version_minor))
            + self.time.encode()
            + self.source_bytes
            + self.destination_bytes
            + len(self.app_data).to_bytes(2, "little")
            + bytes((self.command,))
        )

    @property
    def checksum(self) -> int:
        return checksum(self.control_unit() + self.app_data)


def encode_frame(frame: Frame, *, max_app_data_len: int = MAX_APP_DATA_LEN) -> bytes:
    """Wire bytes of ``frame``. Raises :class:`InvalidFieldError` if its application data is over the limit."""
    if len(frame.app_data) > max_app_data_len:
        raise InvalidFieldError(f"application data is {len(frame.app_data)} bytes, the limit is {max_app_data_len}")
    body = frame.control_unit() + frame.app_data
    return START + body + bytes((checksum(body),)) + END


def declared_app_data_len(header: bytes | bytearray) -> int:
    """The application data length from the first 26 bytes of a frame (start marker included)."""
    return int.from_bytes(header[24:26], "little")


def decode_frame(data: bytes, *, max_app_data_len: int = MAX_APP_DATA_LEN) -> Frame:
    """Decode exactly one frame from ``data``.

    Raises (in this order of checking) :class:`NoStartError`, :class:`TruncatedError` (header incomplete),
    :class:`BadLengthError` (length over ``max_app_data_len``), :class:`TruncatedError` (data incomplete),
    :class:`BadEndError`, :class:`BadLengthError` (bytes after the end marker), :class:`BadChecksumError`.
    Content of the application data never raises (see :func:`decode_app_data`).
    """
    data = bytes(data)
    if not START.startswith(data[:2]):
        raise NoStartError(f"frame starts with {data[:2].hex(' ') or 'nothing'}, not 40 40")
    if len(data) < HEADER_SIZE:
        raise TruncatedError(f"{len(data)} bytes, the header alone is {HEADER_SIZE}")
    length = declared_app_data_len(data)
    if length > max_app_data_len:
        raise BadLengthError(f"application data length {length} is over the limit {max_app_data_len}")
    total = FRAME_OVERHEAD + length
    if len(data) < total:
        raise TruncatedError(f"{len(data)} bytes, the length field says the frame is {total}")
    if data[total - 2 : total] != END:
        raise BadEndError(f"bytes {total - 2}..{total - 1} are {data[total - 2 : total].hex(' ')}, not 23 23")
    if len(data) > total:
        raise BadLengthError(f"{len(data) - total} bytes after the end of a {total}-byte frame")
    body = data[2 : total - 3]
    expected = checksum(body)
    if data[total - 3] != expected:
        raise BadChecksumError(f"checksum byte is {data[total - 3]:#04x}, the sum is {expected:#04x}")
    return Frame(
        serial=int.from_bytes(data[2:4], "little"),
        version_major=data[4],
        version_minor=data[5],
        time=UitdTime.decode(data[6:12]),
        source=int.from_bytes(data[12:18], "little"),
        destination=int.from_bytes(data[18:24], "little"),
        command=data[26],
        app_data=data[27 : total - 3],
    )


def build_frame(
    *,
    serial: int,
    time: UitdTime,
    source: int,
    destination: int,
    command: int,
    unit: ApplicationUnit | RawUnit | None = None,
    version_major: int = 1,
    version_minor: int = 0,
) -> Frame:
    """A frame carrying ``unit`` (or no application data). The standard fixes the major version at 1."""
    return Frame(
        serial=serial,
        version_major=version_major,
        version_minor=version_minor,
        time=time,
        source=source,
        destination=destination,
        command=command,
        app_data=b"" if unit is None else unit.encode(),
    )


def _answer(request: Frame, *, command: int, time: UitdTime, unit: ApplicationUnit | RawUnit | None) -> Frame:
    return build_frame(
        serial=request.serial,
        version_major=request.version_major,
        version_minor=request.version_minor,
        time=time,
        source=request.destination,
        destination=request.source,
        command=command,
        unit=unit,
    )


def make_confirm(request: Frame, *, time: UitdTime) -> Frame:
    """The confirm (3) answering a send-data or control frame: same serial and version, addresses swapped,
    no application data, stamped with the answering side's ``time``."""
    return _answer(request, command=Command.CONFIRM, time=time, unit=None)


def make_deny(request: Frame, *, time: UitdTime) -> Frame:
    """The deny (6) answer to ``request`` (e.g. a frame whose content cannot be handled)."""
    return _answer(request, command=Command.DENY, time=time, unit=None)


def make_response(request: Frame, *, time: UitdTime, unit: ApplicationUnit | RawUnit | None) -> Frame:
    """The response (5) to a request (4): same serial and version, addresses swapped, carrying ``unit``."""
    return _answer(request, command=Command.RESPONSE, time=time, unit=unit)


def make_time_sync(
    *,
    serial: int,
    time: UitdTime,
    source: int,
    destination: int,
    sync_to: UitdTime,
    version_major: int = 1,
    version_minor: int = 0,
) -> Frame:
    """Control (1) frame of type 90 setting the UITD's clock to ``sync_to`` (6-byte time, no reserved byte)."""
    unit = ApplicationUnit(type_flag=UnitType.SYNC_UITD_TIME, objects=(SyncTime(time=sync_to),))
    return build_frame(
        serial=serial,
        time=time,
        source=source,
        destination=destination,
        command=Command.CONTROL,
        unit=unit,
        version_major=version_major,
        version_minor=version_minor,
    )
