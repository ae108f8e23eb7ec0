"""Application data of GB/T 26875.3-2011 frames: the data unit (type flag, object count, information objects).

Layout facts and where they were checked are in ``docs/uitd.md``. Everything here is pure: bytes in, frozen
dataclasses out, and back. Multi-byte integers are little-endian (low byte first), as the standard says for the
part address, status words and analog values.

Decoding never raises on wire content: an unknown type flag, or a known one whose bytes do not fit its layout,
comes back as a :class:`RawUnit` that keeps the bytes, so ``encode_app_data(decode_app_data(x)) == x`` always.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, fields
from datetime import datetime, tzinfo
from enum import IntFlag
from typing import TYPE_CHECKING, Any, ClassVar, Self

from .codes import (
    ANALOG_SCALES,
    AnalogType,
    PartFlag,
    SystemFlag,
    SystemOperationFlag,
    SystemType,
    UitdFlag,
    UitdOperationFlag,
    UnitType,
)
from .errors import InvalidFieldError, InvalidTimeError

__all__ = [
    "DESCRIPTION_SIZE",
    "AnalogType",
    "ApplicationUnit",
    "InfoObject",
    "Inspection",
    "PartAnalog",
    "PartConfig",
    "PartFlag",
    "PartStatus",
    "RawUnit",
    "ReadPart",
    "ReadSystem",
    "ReadSystemRecords",
    "ReadUitdRecords",
    "SyncTime",
    "SystemConfig",
    "SystemFlag",
    "SystemOperation",
    "SystemOperationFlag",
    "SystemSoftwareVersion",
    "SystemState",
    "SystemTime",
    "SystemType",
    "UitdCommand",
    "UitdConfig",
    "UitdFlag",
    "UitdOperation",
    "UitdOperationFlag",
    "UitdSoftwareVersion",
    "UitdStatus",
    "UitdSystemTime",
    "UitdTime",
    "UnitType",
    "decode_app_data",
    "decode_description",
    "encode_app_data",
    "encode_description",
]

#: Part descriptions (types 2 and 7) are fixed 31-byte GB 18030 strings.
DESCRIPTION_SIZE = 31
_TEXT_ENCODING = "gb18030"


def _check_int(owner: str, name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise InvalidFieldError(f"{owner}.{name} must be an int in {lo}..{hi}, got {value!r}")


def _check_bytes(owner: str, name: str, value: object, *, exact: int | None = None, most: int | None = None) -> None:
    if not isinstance(value, bytes):
        raise InvalidFieldError(f"{owner}.{name} must be bytes, got {type(value).__name__}")
    if exact is not None and len(value) != exact:
        raise InvalidFieldError(f"{owner}.{name} must be exactly {exact} bytes, got {len(value)}")
    if most is not None and len(value) > most:
        raise InvalidFieldError(f"{owner}.{name} must be at most {most} bytes, got {len(value)}")


def decode_description(raw: bytes) -> str:
    """GB 18030 text of a description field: cut at the first NUL, undecodable bytes replaced, trailing blanks cut."""
    return raw.split(b"\x00", 1)[0].decode(_TEXT_ENCODING, errors="replace").rstrip()


def encode_description(text: str, *, size: int | None = DESCRIPTION_SIZE) -> bytes:
    """GB 18030 bytes of ``text``, NUL-padded to ``size`` (or unpadded when ``size`` is None).

    Raises :class:`InvalidFieldError` when the text does not fit, has a NUL, or has characters GB 18030 cannot carry.
    """
    if "\x00" in text:
        raise InvalidFieldError("description must not contain NUL")
    try:
        raw = text.encode(_TEXT_ENCODING)
    except UnicodeEncodeError as exc:  # lone surrogates
        raise InvalidFieldError(f"description is not encodable as GB 18030: {exc}") from exc
    limit = 255 if size is None else size
    if len(raw) > limit:
        raise InvalidFieldError(f"description is {len(raw)} bytes in GB 18030, at most {limit} fit")
    return raw if size is None else raw.ljust(size, b"\x00")


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdTime:
    """The 6-byte time stamp (8.2.2): second, minute, hour, day, month, year - 2000, one byte each, in that order.

    Any byte values are kept (a device may send month 0); :meth:`to_datetime` is where validity is checked.
    The standard names no time zone; devices send their local (in practice China Standard) time.
    """

    SIZE: ClassVar[int] = 6

    second: int
    minute: int
    hour: int
    day: int
    month: int
    year: int

    def __post_init__(self) -> None:
        for name in ("second", "minute", "hour", "day", "month"):
            _check_int("UitdTime", name, getattr(self, name), 0, 255)
        _check_int("UitdTime", "year", self.year, 2000, 2255)

    @classmethod
    def decode(cls, raw: bytes) -> UitdTime:
        if len(raw) != cls.SIZE:
            raise InvalidFieldError(f"a time stamp is 6 bytes, got {len(raw)}")
        s, mi, h, d, mo, y = raw
        return cls(second=s, minute=mi, hour=h, day=d, month=mo, year=2000 + y)

    def encode(self) -> bytes:
        return bytes((self.second, self.minute, self.hour, self.day, self.month, self.year - 2000))

    @classmethod
    def from_datetime(cls, value: datetime) -> UitdTime:
        """Wall-clock fields of ``value`` (its own zone, if any, is not converted). Year must be 2000-2255."""
        if not 2000 <= value.year <= 2255:
            raise InvalidFieldError(f"year {value.year} does not fit the 1-byte year-2000 field")
        return cls(
            second=value.second,
            minute=value.minute,
            hour=value.hour,
            day=value.day,
            month=value.month,
            year=value.year,
        )

    def to_datetime(self, *, tz: tzinfo | None = None) -> datetime:
        """The time as a ``datetime`` in ``tz`` (naive when None). Raises :class:`InvalidTimeError` if not real."""
        try:
            return datetime(self.year, self.month, self.day, self.hour, self.minute, self.second, tzinfo=tz)
        except ValueError as exc:
            raise InvalidTimeError(f"{self.encode().hex(' ')} is not a calendar time: {exc}") from exc

    @property
    def is_valid(self) -> bool:
        try:
            self.to_datetime()
        except InvalidTimeError:
            return False
        return True


class _Short(Exception):
    """Internal: the bytes end inside an information object."""


_FIELD_CODE = re.compile(r"(\d*)([a-zA-Z])")
_INT_RANGES = {
    "B": (0, 0xFF),
    "H": (0, 0xFFFF),
    "I": (0, 0xFFFF_FFFF),
    "h": (-0x8000, 0x7FFF),
}
_TIME_CODE = "6s"


def _codes(layout: str) -> list[str]:
    return [count + code for count, code in _FIELD_CODE.findall(layout)]


def _flag_property(member: IntFlag) -> property:
    def get(self: _StatusBits) -> bool:
        return bool(self.status & member)

    return property(get, doc=f"{type(member).__name__}.{member.name}: bit {member.value.bit_length() - 1}.")


class _StatusBits:
    """Mixin of objects with a ``status`` word: one bool property per member of its IntFlag table in ``codes.py``
    (``PartFlag.FIRE_ALARM`` -> ``.fire_alarm``), so that each bit's number is written once, in the table."""

    __slots__ = ()
    status: int

    def __init_subclass__(cls, *, status_flags: type[IntFlag] | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if status_flags is not None:
            for member in status_flags:
                setattr(cls, str(member.name).lower(), _flag_property(member))

    if TYPE_CHECKING:
        # The generated bit properties, for the type checker.
        def __getattr__(self, name: str) -> bool: ...


class _Fixed:
    """Base of fixed-size information objects: the dataclass fields, in order, are the struct fields of ``_LAYOUT``.

    Fields whose struct code is ``6s`` hold a :class:`UitdTime`; ``31s`` fields hold raw description bytes.
    """

    __slots__ = ()
    _LAYOUT: ClassVar[struct.Struct]
    _CODES: ClassVar[list[str]]

    def __init_subclass__(cls, *, layout: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if layout:
            cls._LAYOUT = struct.Struct("<" + layout)
            cls._CODES = _codes(layout)

    def __post_init__(self) -> None:
        owner = type(self).__name__
        for f, code in zip(fields(self), self._CODES, strict=True):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if code == _TIME_CODE:
                if not isinstance(value, UitdTime):
                    raise InvalidFieldError(f"{owner}.{f.name} must be a UitdTime, got {type(value).__name__}")
            elif code.endswith("s"):
                _check_bytes(owner, f.name, value, exact=int(code[:-1]))
            else:
                lo, hi = _INT_RANGES[code]
                _check_int(owner, f.name, value, lo, hi)

    @classmethod
    def size(cls) -> int:
        return cls._LAYOUT.size

    def encode(self) -> bytes:
        values = [getattr(self, f.name) for f in fields(self)]  # type: ignore[arg-type]
        return self._LAYOUT.pack(*(v.encode() if isinstance(v, UitdTime) else v for v in values))

    @classmethod
    def parse(cls, data: bytes, pos: int) -> tuple[Self, int]:
        size = cls._LAYOUT.size
        if len(data) - pos < size:
            raise _Short
        values = cls._LAYOUT.unpack_from(data, pos)
        kwargs: dict[str, Any] = {}
        for f, code, value in zip(fields(cls), cls._CODES, values, strict=True):  # type: ignore[arg-type]
            kwargs[f.name] = UitdTime.decode(value) if code == _TIME_CODE else value
        return cls(**kwargs), pos + size


# ---------------------------------------------------------------------------------------------------------------
# Upstream (UITD -> monitoring centre): types 1-8 describe the building's fire-protection systems, 21-28 the UITD.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemState(_StatusBits, _Fixed, layout="BBH6s", status_flags=SystemFlag):
    """Type 1: state of a building fire-protection system (8.2.1.1 + time). 10 bytes."""

    system_type: int
    system_address: int
    status: int
    time: UitdTime

    @property
    def flags(self) -> SystemFlag:
        return SystemFlag(self.status)


@dataclass(frozen=True, slots=True, kw_only=True)
class PartStatus(_StatusBits, _Fixed, layout="BBBIH31s6s", status_flags=PartFlag):
    """Type 2: running status of one part (detector, module, ...) (8.2.1.2 + time). 46 bytes."""

    system_type: int
    system_address: int
    part_type: int
    part_address: int
    status: int
    raw_description: bytes
    time: UitdTime

    @property
    def description(self) -> str:
        return decode_description(self.raw_description)

    @property
    def flags(self) -> PartFlag:
        return PartFlag(self.status)


@dataclass(frozen=True, slots=True, kw_only=True)
class PartAnalog(_Fixed, layout="BBBIBh6s"):
    """Type 3: one analog value of a part (8.2.1.3 + sample time). Value is a signed 16-bit count. 16 bytes."""

    system_type: int
    system_address: int
    part_type: int
    part_address: int
    analog_type: int
    value: int
    time: UitdTime

    @property
    def scaled(self) -> tuple[float, str] | None:
        """``(value in unit, unit)`` for the standard analog types, None for unused/reserved/user types."""
        scale = ANALOG_SCALES.get(self.analog_type)
        if scale is None:
            return None
        unit, step = scale
        return round(self.value * step, 6), unit


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemOperation(_Fixed, layout="BBBB6s"):
    """Type 4: an operating record of a fire-protection system (8.2.1.4 + time). 10 bytes."""

    system_type: int
    system_address: int
    operation: int
    operator: int
    time: UitdTime

    @property
    def flags(self) -> SystemOperationFlag:
        return SystemOperationFlag(self.operation)


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemSoftwareVersion(_Fixed, layout="BBBB"):
    """Type 5: software version of a fire-protection system (8.2.1.5). 4 bytes, no time."""

    system_type: int
    system_address: int
    major: int
    minor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemConfig:
    """Type 6: configuration text of a fire-protection system (8.2.1.6): type, address, length L, L bytes."""

    system_type: int
    system_address: int
    raw_description: bytes

    def __post_init__(self) -> None:
        _check_int("SystemConfig", "system_type", self.system_type, 0, 255)
        _check_int("SystemConfig", "system_address", self.system_address, 0, 255)
        _check_bytes("SystemConfig", "raw_description", self.raw_description, most=255)

    @property
    def description(self) -> str:
        return decode_description(self.raw_description)

    def encode(self) -> bytes:
        return bytes((self.system_type, self.system_address, len(self.raw_description))) + self.raw_description

    @classmethod
    def parse(cls, data: bytes, pos: int) -> tuple[SystemConfig, int]:
        if len(data) - pos < 3:
            raise _Short
        length = data[pos + 2]
        end = pos + 3 + length
        if end > len(data):
            raise _Short
        return cls(system_type=data[pos], system_address=data[pos + 1], raw_description=data[pos + 3 : end]), end


@dataclass(frozen=True, slots=True, kw_only=True)
class PartConfig(_Fixed, layout="BBBI31s"):
    """Type 7: configuration (description) of one part (8.2.1.7). 38 bytes, no time."""

    system_type: int
    system_address: int
    part_type: int
    part_address: int
    raw_description: bytes

    @property
    def description(self) -> str:
        return decode_description(self.raw_description)


@dataclass(frozen=True, slots=True, kw_only=True)
class SystemTime(_Fixed, layout="BB6s"):
    """Type 8: the clock of a fire-protection system (8.3.1.8). 8 bytes."""

    system_type: int
    system_address: int
    time: UitdTime


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdStatus(_StatusBits, _Fixed, layout="B6s", status_flags=UitdFlag):
    """Type 21: running state of the UITD itself (8.2.1.8 + time). 7 bytes."""

    status: int
    time: UitdTime

    @property
    def flags(self) -> UitdFlag:
        return UitdFlag(self.status)


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdOperation(_Fixed, layout="BB6s"):
    """Type 24: an operating record of the UITD (8.2.1.9 + time). 8 bytes."""

    operation: int
    operator: int
    time: UitdTime

    @property
    def flags(self) -> UitdOperationFlag:
        return UitdOperationFlag(self.operation)


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdSoftwareVersion(_Fixed, layout="BB"):
    """Type 25: software version of the UITD (8.2.1.10). 2 bytes."""

    major: int
    minor: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdConfig:
    """Type 26: configuration text of the UITD (8.2.1.11): length L, L bytes of GB 18030."""

    raw_description: bytes

    def __post_init__(self) -> None:
        _check_bytes("UitdConfig", "raw_description", self.raw_description, most=255)

    @property
    def description(self) -> str:
        return decode_description(self.raw_description)

    def encode(self) -> bytes:
        return bytes((len(self.raw_description),)) + self.raw_description

    @classmethod
    def parse(cls, data: bytes, pos: int) -> tuple[UitdConfig, int]:
        if len(data) - pos < 1:
            raise _Short
        end = pos + 1 + data[pos]
        if end > len(data):
            raise _Short
        return cls(raw_description=data[pos + 1 : end]), end


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdSystemTime(_Fixed, layout="6s"):
    """Type 28: the UITD's clock (8.3.1.13). 6 bytes."""

    time: UitdTime


# ---------------------------------------------------------------------------------------------------------------
# Downstream (monitoring centre -> UITD): reads 61-68 and 81-88, initialise 89, clock sync 90, inspection 91.
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadSystem(_Fixed, layout="BB"):
    """Types 61, 65, 66, 68: which system to read (type, address). 2 bytes."""

    system_type: int
    system_address: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadPart(_Fixed, layout="BBI"):
    """Types 62, 63, 67: which part to read (system type, system address, part address). 6 bytes."""

    system_type: int
    system_address: int
    part_address: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadSystemRecords(_Fixed, layout="BBB6s"):
    """Type 64: read ``count`` operating records of a system from time ``start``. 9 bytes."""

    system_type: int
    system_address: int
    count: int
    start: UitdTime


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadUitdRecords(_Fixed, layout="B6s"):
    """Type 84: read ``count`` operating records of the UITD from time ``start``. 7 bytes."""

    count: int
    start: UitdTime


@dataclass(frozen=True, slots=True, kw_only=True)
class UitdCommand(_Fixed, layout="B"):
    """Types 81, 85, 86, 88 (reads of the UITD) and 89 (initialise): one reserved byte, 0 by the standard."""

    reserved: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncTime:
    """Type 90: set the UITD's clock to ``time``.

    The standard's form is the 6-byte time alone; one public implementation puts a reserved byte before it
    (see docs/uitd.md). Decoding accepts both; ``reserved`` is None for the 6-byte form and is re-emitted if set.
    """

    time: UitdTime
    reserved: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.time, UitdTime):
            raise InvalidFieldError(f"SyncTime.time must be a UitdTime, got {type(self.time).__name__}")
        if self.reserved is not None:
            _check_int("SyncTime", "reserved", self.reserved, 0, 255)

    def encode(self) -> bytes:
        prefix = b"" if self.reserved is None else bytes((self.reserved,))
        return prefix + self.time.encode()

    @classmethod
    def parse(cls, data: bytes, pos: int) -> tuple[SyncTime, int]:
        rest = len(data) - pos
        if rest == UitdTime.SIZE + 1:
            return cls(reserved=data[pos], time=UitdTime.decode(data[pos + 1 : pos + 7])), pos + 7
        if rest < UitdTime.SIZE:
            raise _Short
        return cls(time=UitdTime.decode(data[pos : pos + 6])), pos + 6


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspection(_Fixed, layout="B"):
    """Type 91: inspection (查岗) command. The standard's byte is reserved; a vendor example sends 10 (minutes)."""

    value: int = 0


InfoObject = (
    SystemState
    | PartStatus
    | PartAnalog
    | SystemOperation
    | SystemSoftwareVersion
    | SystemConfig
    | PartConfig
    | SystemTime
    | UitdStatus
    | UitdOperation
    | UitdSoftwareVersion
    | UitdConfig
    | UitdSystemTime
    | ReadSystem
    | ReadPart
    | ReadSystemRecords
    | ReadUitdRecords
    | UitdCommand
    | SyncTime
    | Inspection
)

#: Type flag -> the information object class it carries.
OBJECT_CLASSES: dict[int, type[InfoObject]] = {
    UnitType.SYSTEM_STATE: SystemState,
    UnitType.PART_STATUS: PartStatus,
    UnitType.PART_ANALOG: PartAnalog,
    UnitType.SYSTEM_OPERATION: SystemOperation,
    UnitType.SYSTEM_SOFTWARE_VERSION: SystemSoftwareVersion,
    UnitType.SYSTEM_CONFIG: SystemConfig,
    UnitType.PART_CONFIG: PartConfig,
    UnitType.SYSTEM_TIME: SystemTime,
    UnitType.UITD_STATUS: UitdStatus,
    UnitType.UITD_OPERATION: UitdOperation,
    UnitType.UITD_SOFTWARE_VERSION: UitdSoftwareVersion,
    UnitType.UITD_CONFIG: UitdConfig,
    UnitType.UITD_TIME: UitdSystemTime,
    UnitType.READ_SYSTEM_STATE: ReadSystem,
    UnitType.READ_PART_STATUS: ReadPart,
    UnitType.READ_PART_ANALOG: ReadPart,
    UnitType.READ_SYSTEM_OPERATIONS: ReadSystemRecords,
    UnitType.READ_SYSTEM_SOFTWARE_VERSION: ReadSystem,
    UnitType.READ_SYSTEM_CONFIG: ReadSystem,
    UnitType.READ_PART_CONFIG: ReadPart,
    UnitType.READ_SYSTEM_TIME: ReadSystem,
    UnitType.READ_UITD_STATUS: UitdCommand,
    UnitType.READ_UITD_OPERATIONS: ReadUitdRecords,
    UnitType.READ_UITD_SOFTWARE_VERSION: UitdCommand,
    UnitType.READ_UITD_CONFIG: UitdCommand,
    UnitType.READ_UITD_TIME: UitdCommand,
    UnitType.INIT_UITD: UitdCommand,
    UnitType.SYNC_UITD_TIME: SyncTime,
    UnitType.INSPECT: Inspection,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplicationUnit:
    """A decoded application data unit: type flag, its information objects, and any bytes after the last object.

    ``trailing`` is normally empty; it keeps padding some devices append so that encoding gives the bytes back.
    """

    type_flag: int
    objects: tuple[InfoObject, ...]
    trailing: bytes = b""

    def __post_init__(self) -> None:
        _check_int("ApplicationUnit", "type_flag", self.type_flag, 0, 255)
        cls = OBJECT_CLASSES.get(self.type_flag)
        if cls is None:
            raise InvalidFieldError(f"type flag {self.type_flag} has no decoder; build a RawUnit for it")
        if not isinstance(self.objects, tuple):
            raise InvalidFieldError("ApplicationUnit.objects must be a tuple")
        if len(self.objects) > 255:
            raise InvalidFieldError(f"at most 255 objects fit the 1-byte count, got {len(self.objects)}")
        for obj in self.objects:
            if not isinstance(obj, cls):
                raise InvalidFieldError(f"type {self.type_flag} carries {cls.__name__}, got {type(obj).__name__}")
        _check_bytes("ApplicationUnit", "trailing", self.trailing)

    @property
    def type(self) -> UnitType:
        return UnitType(self.type_flag)

    def encode(self) -> bytes:
        body = b"".join(obj.encode() for obj in self.objects)
        return bytes((self.type_flag, len(self.objects))) + body + self.trailing


@dataclass(frozen=True, slots=True, kw_only=True)
class RawUnit:
    """An application data unit kept as bytes: an unknown (reserved/user) type flag, or bytes that do not fit
    the layout of a known type (``problem`` says which). ``count`` is None when the data is a lone type byte."""

    type_flag: int
    count: int | None
    body: bytes
    problem: str

    def __post_init__(self) -> None:
        _check_int("RawUnit", "type_flag", self.type_flag, 0, 255)
        if self.count is None:
            if self.body:
                raise InvalidFieldError("RawUnit without a count byte cannot have a body")
        else:
            _check_int("RawUnit", "count", self.count, 0, 255)
        _check_bytes("RawUnit", "body", self.body)

    def encode(self) -> bytes:
        count = b"" if self.count is None else bytes((self.count,))
        return bytes((self.type_flag,)) + count + self.body


def decode_app_data(data: bytes) -> ApplicationUnit | RawUnit | None:
    """Decode application data (None when empty, as in confirm/deny frames). Never raises on content."""
    data = bytes(data)
    if not data:
        return None
    type_flag = data[0]
    if len(data) == 1:
        return RawUnit(type_flag=type_flag, count=None, body=b"", problem="no_count")
    count, body = data[1], data[2:]
    cls = OBJECT_CLASSES.get(type_flag)
    if cls is None:
        return RawUnit(type_flag=type_flag, count=count, body=body, problem="unknown_type")
    objects: list[InfoObject] = []
    pos = 2
    try:
        for _ in range(count):
            obj, pos = cls.parse(data, pos)
            objects.append(obj)
    except _Short:
        return RawUnit(type_flag=type_flag, count=count, body=body, problem="short")
    return ApplicationUnit(type_flag=type_flag, objects=tuple(objects), trailing=data[pos:])


def encode_app_data(unit: ApplicationUnit | RawUnit | None) -> bytes:
    """Bytes of an application data unit (empty for None)."""
    return b"" if unit is None else unit.encode()
