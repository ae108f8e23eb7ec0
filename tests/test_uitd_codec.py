"""GB/T 26875.3 (UITD) codec: known-answer frames from public prior art, round trips, every error reason, and
properties of the streaming reader (random bytes, random chunkings, resynchronisation). See docs/uitd.md."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.ingest.uitd import (
    MAX_FRAME_SIZE,
    REASONS,
    ApplicationUnit,
    BadChecksumError,
    BadEndError,
    BadLengthError,
    Command,
    Frame,
    FrameError,
    FrameReader,
    InvalidFieldError,
    InvalidTimeError,
    NoStartError,
    PartAnalog,
    PartConfig,
    PartFlag,
    PartStatus,
    RawUnit,
    ReaderClosedError,
    SyncTime,
    SystemConfig,
    SystemState,
    TruncatedError,
    UitdConfig,
    UitdError,
    UitdOperation,
    UitdOperationFlag,
    UitdSoftwareVersion,
    UitdStatus,
    UitdSystemTime,
    UitdTime,
    UnitType,
    build_frame,
    checksum,
    decode_app_data,
    decode_description,
    decode_frame,
    encode_app_data,
    encode_description,
    encode_frame,
    make_confirm,
    make_deny,
    make_response,
    make_time_sync,
)
from gateway.ingest.uitd.objects import OBJECT_CLASSES, Inspection, UitdCommand

PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# -- known-answer frames ---------------------------------------------------------------------------------------

# dgiot/dgiot, apps/dgiot_gb26875/src/protocol/dgiot_gb26875_decoder.erl, function test/0 (Apache-2.0): the frame
# its own test parses and re-encodes. Send data (2), one "part running status" object (type 2).
DGIOT_FRAME = h(
    "40 40"  # start
    " 00 00"  # serial 0
    " 01 01"  # version 1.1
    " 18 0d 11 16 0a 14"  # 2020-10-22 17:13:24
    " 00 00 00 00 00 00"  # source
    " 06 05 04 03 02 01"  # destination
    " 30 00"  # application data length 48
    " 02"  # command: send data
    " 02 01"  # type 2 (part running status), 1 object
    " 01 03 00 d9 00 06 00 02 00"  # system type 1, system address 3, part type 0, part address, status 0x0002
    " a3 c1 c7 f8 a3 b1 b2 e3 df c8 b2 b8 d7 df c0 c8"  # description (GB 2312) ...
    " 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"  # ... NUL-padded to 31 bytes
    " 30 12 13 01 08 14"  # 2020-08-01 19:18:48
    " 68 23 23"  # checksum, end
)

# ActorLancer/GB-T-26875.3.2011-rs, "GB26875文档.md", section 示例 (vendor example exchange, 2012-09-26 09:58:02).
# UITD address 79 03 00 00 00 00, monitoring centre 38 5B 01 00 00 00.
EX_PART_FIRE = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B 01 00 00 00 30 00 02 02 01 01 01 28 0A 00 02 00"
    " 02 00" + " 20" * 30 + " 00 02 3A 09 1A 09 0C 46 23 23"
)  # 上传 "2号10区 感烟探测器 火警"
EX_CONFIRM = h("40 40 01 00 01 01 23 3A 09 1A 09 0C 38 5B 01 00 00 00 79 03 00 00 00 00 00 00 03 AB 23 23")
EX_DENY = h("40 40 01 00 01 01 23 3A 09 1A 09 0C 38 5B 01 00 00 00 79 03 00 00 00 00 00 00 06 AE 23 23")
EX_UITD_MAIN_POWER = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B"
    " 01 00 00 00 09 00 02 15 01 08 02 3A 09 1A 09 0C 42 23 23"
)
EX_UITD_INSPECTION_REPLY = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B 01 00 00 00 0A 00 02 18 01 20 01 02 3A 09 1A 09 0C"
    " 5F 23 23"
)
EX_UITD_VERSION = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B 01 00 00 00 04 00 02 19 01 01 01 C7 23 23"
)
EX_UITD_TIME = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B 01 00 00 00 08 00 02 1C 01 02 3A 09 1A 09 0C 40 23 23"
)
EX_READ_UITD_STATUS = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 38 5B 01 00 00 00 79 03 00 00 00 00 03 00 04 51 01 00 FE 23 23"
)
EX_RESPONSE_UITD_STATUS = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 79 03 00 00 00 00 38 5B"
    " 01 00 00 00 09 00 05 15 01 08 02 3A 09 1A 09 0C 45 23 23"
)
EX_INIT = h("40 40 01 00 01 01 20 3A 09 1A 09 0C 38 5B 01 00 00 00 79 03 00 00 00 00 03 00 01 59 01 00 03 23 23")
EX_SYNC_TIME = h(
    "40 40 01 00 01 01 20 3A 09 1A 09 0C 38 5B 01 00 00 00 79 03 00 00 00 00 08 00 01 5A 01 02 3A 09 1A 09 0C 7D 23 23"
)
EX_INSPECT = h("40 40 01 00 01 01 20 3A 09 1A 09 0C 38 5B 01 00 00 00 79 03 00 00 00 00 03 00 01 5B 01 0A 0F 23 23")

UITD = 0x0379
CENTRE = 0x015B38
T_0958_02 = UitdTime(second=2, minute=58, hour=9, day=26, month=9, year=2012)
T_0958_35 = UitdTime(second=35, minute=58, hour=9, day=26, month=9, year=2012)
T_0958_32 = UitdTime(second=32, minute=58, hour=9, day=26, month=9, year=2012)

ALL_EXAMPLES = [
    DGIOT_FRAME,
    EX_PART_FIRE,
    EX_CONFIRM,
    EX_DENY,
    EX_UITD_MAIN_POWER,
    EX_UITD_INSPECTION_REPLY,
    EX_UITD_VERSION,
    EX_UITD_TIME,
    EX_READ_UITD_STATUS,
    EX_RESPONSE_UITD_STATUS,
    EX_INIT,
    EX_SYNC_TIME,
    EX_INSPECT,
]


def test_dgiot_known_answer() -> None:
    frame = decode_frame(DGIOT_FRAME)
    assert frame.serial == 0
    assert (frame.version_major, frame.version_minor) == (1, 1)
    assert frame.time.to_datetime() == datetime(2020, 10, 22, 17, 13, 24)
    assert frame.source == 0
    assert frame.destination_bytes == h("06 05 04 03 02 01")
    assert frame.destination == 0x0102_0304_0506
    assert frame.command == Command.SEND_DATA
    assert frame.checksum == 0x68
    unit = frame.unit
    assert isinstance(unit, ApplicationUnit)
    assert unit.type is UnitType.PART_STATUS
    assert unit.trailing == b""
    (part,) = unit.objects
    assert isinstance(part, PartStatus)
    assert (part.system_type, part.system_address, part.part_type) == (1, 3, 0)
    assert part.part_address == 0x0006_00D9
    assert part.status == 0x0002
    assert part.fire_alarm and not part.fault and not part.normal and not part.power_fault
    assert part.flags == PartFlag.FIRE_ALARM
    assert part.description == "Ａ区１层呷哺走廊"
    assert part.time.to_datetime() == datetime(2020, 8, 1, 19, 18, 48)
    assert encode_frame(frame) == DGIOT_FRAME


@pytest.mark.parametrize("raw", ALL_EXAMPLES, ids=range(len(ALL_EXAMPLES)))
def test_examples_round_trip(raw: bytes) -> None:
    frame = decode_frame(raw)
    assert encode_frame(frame) == raw
    assert checksum(raw[2:-3]) == raw[-3]
    assert not isinstance(frame.unit, RawUnit)


def test_vendor_part_fire_alarm() -> None:
    frame = decode_frame(EX_PART_FIRE)
    assert (frame.serial, frame.source, frame.destination) == (1, UITD, CENTRE)
    assert frame.time == T_0958_32
    assert isinstance(frame.unit, ApplicationUnit)
    (part,) = frame.unit.objects
    assert isinstance(part, PartStatus)
    assert part.part_type == 40  # smoke detector
    assert part.part_address.to_bytes(4, "little") == h("0A 00 02 00")  # "2号10区": zone 10, number 2
    assert part.fire_alarm
    assert part.description == ""  # 30 spaces and a NUL
    assert part.time == T_0958_02


def test_vendor_uitd_objects() -> None:
    status = decode_frame(EX_UITD_MAIN_POWER).unit
    assert isinstance(status, ApplicationUnit)
    assert status.objects == (UitdStatus(status=0x08, time=T_0958_02),)
    assert isinstance(status.objects[0], UitdStatus)
    assert status.objects[0].main_power_fault and not status.objects[0].fire_alarm

    op = decode_frame(EX_UITD_INSPECTION_REPLY).unit
    assert isinstance(op, ApplicationUnit)
    assert op.objects == (UitdOperation(operation=0x20, operator=1, time=T_0958_02),)
    assert isinstance(op.objects[0], UitdOperation)
    assert op.objects[0].flags == UitdOperationFlag.INSPECTION_REPLY

    version = decode_frame(EX_UITD_VERSION).unit
    assert isinstance(version, ApplicationUnit)
    assert version.objects == (UitdSoftwareVersion(major=1, minor=1),)

    clock = decode_frame(EX_UITD_TIME).unit
    assert isinstance(clock, ApplicationUnit)
    assert clock.objects == (UitdSystemTime(time=T_0958_02),)


def test_vendor_downstream_commands() -> None:
    read = decode_frame(EX_READ_UITD_STATUS)
    assert read.command == Command.REQUEST
    assert read.unit == ApplicationUnit(type_flag=UnitType.READ_UITD_STATUS, objects=(UitdCommand(reserved=0),))
    init = decode_frame(EX_INIT)
    assert init.command == Command.CONTROL
    assert init.unit == ApplicationUnit(type_flag=UnitType.INIT_UITD, objects=(UitdCommand(),))
    sync = decode_frame(EX_SYNC_TIME)
    assert sync.unit == ApplicationUnit(type_flag=UnitType.SYNC_UITD_TIME, objects=(SyncTime(time=T_0958_02),))
    inspect = decode_frame(EX_INSPECT)
    assert inspect.unit == ApplicationUnit(type_flag=UnitType.INSPECT, objects=(Inspection(value=10),))


def test_confirm_and_deny_match_vendor_example() -> None:
    sent = decode_frame(EX_PART_FIRE)
    confirm = make_confirm(sent, time=T_0958_35)
    assert (confirm.serial, confirm.source, confirm.destination, confirm.app_data) == (1, CENTRE, UITD, b"")
    assert encode_frame(confirm) == EX_CONFIRM
    assert encode_frame(make_deny(sent, time=T_0958_35)) == EX_DENY


def test_response_and_time_sync_match_vendor_example() -> None:
    request = decode_frame(EX_READ_UITD_STATUS)
    unit = ApplicationUnit(type_flag=UnitType.UITD_STATUS, objects=(UitdStatus(status=0x08, time=T_0958_02),))
    response = make_response(request, time=T_0958_32, unit=unit)
    assert encode_frame(response) == EX_RESPONSE_UITD_STATUS
    sync = make_time_sync(serial=1, time=T_0958_32, source=CENTRE, destination=UITD, sync_to=T_0958_02, version_minor=1)
    assert encode_frame(sync) == EX_SYNC_TIME


# shootingfans/codec_gb26875_3_2011, codec/codec_test.go (TestDecodeAppData): "7楼02室会议室烟感" in GB 18030.
GO_DESCRIPTION = h("37 c2 a5 30 32 ca d2 bb e1 d2 e9 ca d2 d1 cc b8 d0")
GO_TIME = h("04 00 09 02 07 15")  # 2021-07-02 09:00:04


def test_go_app_data_examples() -> None:
    part = h("02 01 01 02 79 01 02 03 04 04 02") + GO_DESCRIPTION.ljust(31, b"\0") + GO_TIME
    unit = decode_app_data(part)
    assert isinstance(unit, ApplicationUnit)
    (obj,) = unit.objects
    assert isinstance(obj, PartStatus)
    assert obj.description == "7楼02室会议室烟感"
    assert (obj.part_type, obj.part_address, obj.status) == (0x79, 0x04030201, 0x0204)
    assert obj.fault and not obj.power_fault and not obj.fire_alarm  # bit 9 is reserved for parts
    assert obj.time.to_datetime() == datetime(2021, 7, 2, 9, 0, 4)

    analog = decode_app_data(h("03 01 01 02 28 01 02 03 04 03 20 03") + GO_TIME)
    assert isinstance(analog, ApplicationUnit)
    (value,) = analog.objects
    assert isinstance(value, PartAnalog)
    assert value.value == 0x0320
    assert value.scaled == (80.0, "degC")

    config = decode_app_data(h("06 01 01 02 1e") + GO_DESCRIPTION.ljust(30, b"\0"))
    assert isinstance(config, ApplicationUnit)
    (sysconf,) = config.objects
    assert isinstance(sysconf, SystemConfig)
    assert sysconf.description == "7楼02室会议室烟感"
    assert len(sysconf.raw_description) == 30

    uitd_conf = decode_app_data(h("1a 01 1e") + GO_DESCRIPTION.ljust(30, b"\0"))
    assert isinstance(uitd_conf, ApplicationUnit)
    assert uitd_conf.objects == (UitdConfig(raw_description=GO_DESCRIPTION.ljust(30, b"\0")),)

    two_states = decode_app_data(h("01 02 01 02 04 02") + GO_TIME + h("0d 03 05 01") + GO_TIME)
    assert isinstance(two_states, ApplicationUnit)
    first, second = two_states.objects
    assert isinstance(first, SystemState) and isinstance(second, SystemState)
    assert first.status == 0x0204 and first.fault and first.backup_power_fault and not first.bus_fault
    assert (second.system_type, second.status) == (13, 0x0105)


# -- application data edge cases -------------------------------------------------------------------------------


def test_unknown_and_malformed_units_are_kept_raw() -> None:
    assert decode_app_data(b"") is None
    assert decode_app_data(h("80 01 aa bb")) == RawUnit(
        type_flag=0x80, count=1, body=h("aa bb"), problem="unknown_type"
    )
    assert decode_app_data(h("15")) == RawUnit(type_flag=0x15, count=None, body=b"", problem="no_count")
    short = decode_app_data(h("02 02") + bytes(46))  # claims two 46-byte objects, has one
    assert isinstance(short, RawUnit) and short.problem == "short"
    padded = decode_app_data(h("19 01 02 03 00 00"))
    assert isinstance(padded, ApplicationUnit)
    assert padded.objects == (UitdSoftwareVersion(major=2, minor=3),) and padded.trailing == h("00 00")
    for data in (h("80 01 aa bb"), h("15"), h("02 02") + bytes(46), h("19 01 02 03 00 00")):
        assert encode_app_data(decode_app_data(data)) == data


def test_sync_time_with_reserved_byte_is_accepted() -> None:
    # The ActorLancer Rust implementation writes count, a reserved 0, then the time.
    unit = decode_app_data(h("5a 01 00") + T_0958_02.encode())
    assert unit == ApplicationUnit(type_flag=90, objects=(SyncTime(reserved=0, time=T_0958_02),))
    assert isinstance(unit, ApplicationUnit)
    assert unit.encode() == h("5a 01 00") + T_0958_02.encode()


def test_time_validity() -> None:
    bad = UitdTime.decode(h("00 00 00 00 0d 14"))  # month 13: kept, but no datetime
    assert not bad.is_valid
    with pytest.raises(InvalidTimeError) as info:
        bad.to_datetime()
    assert info.value.reason == "bad_time"
    now = datetime(2026, 12, 4, 18, 5, 9)
    assert UitdTime.from_datetime(now).to_datetime() == now
    with pytest.raises(InvalidFieldError):
        UitdTime.from_datetime(datetime(1999, 1, 1))


def test_value_objects_are_frozen_and_keyword_only() -> None:
    frame = decode_frame(DGIOT_FRAME)
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.serial = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        UitdStatus(1, T_0958_02)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        FrameReader(64)  # type: ignore[call-arg]


def test_invalid_fields_are_rejected() -> None:
    with pytest.raises(InvalidFieldError):
        UitdStatus(status=256, time=T_0958_02)
    with pytest.raises(InvalidFieldError):
        PartConfig(system_type=1, system_address=1, part_type=1, part_address=1, raw_description=b"short")
    with pytest.raises(InvalidFieldError):
        ApplicationUnit(type_flag=UnitType.UITD_STATUS, objects=(UitdSoftwareVersion(major=1, minor=1),))
    with pytest.raises(InvalidFieldError):
        build_frame(serial=70000, time=T_0958_02, source=0, destination=0, command=2)
    with pytest.raises(InvalidFieldError):
        encode_frame(
            Frame(
                serial=1,
                version_major=1,
                version_minor=0,
                time=T_0958_02,
                source=0,
                destination=0,
                command=2,
                app_data=bytes(1025),
            )
        )


# -- GB 18030 descriptions -------------------------------------------------------------------------------------


def test_gb18030_descriptions() -> None:
    text = "３号楼𠀀层走廊"  # U+20000 is a four-byte GB 18030 sequence, not in GB 2312
    raw = encode_description(text)
    assert len(raw) == 31 and raw.endswith(b"\0")
    assert decode_description(raw) == text
    part = PartStatus(
        system_type=1,
        system_address=1,
        part_type=42,
        part_address=7,
        status=int(PartFlag.NORMAL | PartFlag.FIRE_ALARM),
        raw_description=raw,
        time=T_0958_02,
    )
    unit = ApplicationUnit(type_flag=UnitType.PART_STATUS, objects=(part,))
    assert decode_app_data(unit.encode()) == unit
    with pytest.raises(InvalidFieldError):
        encode_description("消" * 16)  # 32 bytes
    with pytest.raises(InvalidFieldError):
        encode_description("a\0b")
    assert decode_description(h("ff ff 41 00 ee")).endswith("\ufffdA")  # undecodable bytes never raise


gb18030_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
).filter(lambda s: len(s.encode("gb18030")) <= 31 and s == s.rstrip())


@PROPS
@given(gb18030_text)
def test_description_round_trip(text: str) -> None:
    assert decode_description(encode_description(text)) == text


# -- every error reason ----------------------------------------------------------------------------------------


def _raises(data: bytes, exc: type[UitdError], **kwargs: int) -> None:
    with pytest.raises(exc) as info:
        decode_frame(data, **kwargs)
    assert info.value.reason in REASONS


def test_decode_frame_errors() -> None:
    good = EX_UITD_VERSION
    _raises(b"xx" + good[2:], NoStartError)
    _raises(good[:20], TruncatedError)
    _raises(good[:-1], TruncatedError)
    _raises(good[:24] + h("01 04") + good[26:], BadLengthError)  # 1025 bytes declared
    _raises(good + b"\0", BadLengthError)  # bytes after the end
    _raises(good[:-2] + b"#!", BadEndError)
    _raises(good[:-3] + bytes(((good[-3] + 1) & 0xFF,)) + good[-2:], BadChecksumError)
    _raises(good, BadLengthError, max_app_data_len=3)


def _feed_all(reader: FrameReader, data: bytes, cuts: list[int] | None = None) -> list[Frame | FrameError]:
    out: list[Frame | FrameError] = []
    points = sorted({c for c in (cuts or []) if 0 < c < len(data)})
    for a, b in zip([0, *points], [*points, len(data)], strict=True):
        out += reader.feed(data[a:b])
    return out + reader.close()


def _reasons(items: list[Frame | FrameError]) -> list[str]:
    return ["frame" if isinstance(x, Frame) else x.reason for x in items]


def test_reader_reports_every_reason() -> None:
    good = EX_UITD_VERSION
    bad_sum = good[:-3] + bytes(((good[-3] + 1) & 0xFF,)) + good[-2:]
    bad_end = good[:-2] + b"#!"
    huge = good[:24] + h("01 04") + good[26:]  # declares 1025 bytes
    assert _reasons(_feed_all(FrameReader(), b"noise" + good)) == ["no_start", "frame"]
    assert _reasons(_feed_all(FrameReader(), bad_sum + good)) == ["bad_checksum", "frame"]
    assert _reasons(_feed_all(FrameReader(), bad_end + good)) == ["bad_end", "frame"]
    assert _reasons(_feed_all(FrameReader(), huge + good)) == ["bad_length", "no_start", "frame"]
    # 52 bytes after the refused header are skipped: reported in runs of at most max_frame_size bytes
    assert _reasons(_feed_all(FrameReader(max_frame_size=34), DGIOT_FRAME + good)) == [
        "oversized",
        "no_start",
        "no_start",
        "frame",
    ]
    assert _reasons(_feed_all(FrameReader(), good + good[:10])) == ["frame", "truncated"]
    assert set(_reasons(_feed_all(FrameReader(), bad_sum + bad_end + huge + good[:9] + good))) <= REASONS | {"frame"}


def test_partial_frame_followed_by_a_new_frame_is_not_held_back() -> None:
    reader = FrameReader()
    out = reader.feed(DGIOT_FRAME[:40] + EX_UITD_VERSION)  # device gave up mid-frame and started again
    assert _reasons(out) == ["truncated", "frame"]
    assert isinstance(out[0], FrameError) and out[0].data == DGIOT_FRAME[:40]
    assert out[1] == decode_frame(EX_UITD_VERSION)
    assert reader.buffered == 0


def test_reader_offsets_chunks_and_close() -> None:
    reader = FrameReader()
    stream = EX_CONFIRM + b"zz" + EX_DENY
    out = [x for i in range(len(stream)) for x in reader.feed(stream[i : i + 1])]
    assert _reasons(out) == ["frame", "no_start", "frame"]
    assert isinstance(out[1], FrameError) and (out[1].offset, out[1].data) == (len(EX_CONFIRM), b"zz")
    assert reader.close() == []
    with pytest.raises(ReaderClosedError):
        reader.feed(b"@@")


def test_reader_bounds_its_buffer() -> None:
    reader = FrameReader(max_frame_size=64)
    out = reader.feed(bytes(1000))
    assert _reasons(out) == ["no_start"] * 15  # 15 x 64 bytes reported, the rest still counted
    assert all(isinstance(x, FrameError) and len(x.data) <= 64 for x in out)
    assert reader.buffered < 64
    assert _reasons(reader.feed(b"@@" + h("00") * 22 + h("ff ff"))) == ["no_start", "bad_length"]
    assert reader.buffered < 64


# -- properties ------------------------------------------------------------------------------------------------

u8 = st.integers(0, 0xFF)
times = st.builds(UitdTime, second=u8, minute=u8, hour=u8, day=u8, month=u8, year=st.integers(2000, 2255))
frames = st.builds(
    Frame,
    serial=st.integers(0, 0xFFFF),
    version_major=u8,
    version_minor=u8,
    time=times,
    source=st.integers(0, (1 << 48) - 1),
    destination=st.integers(0, (1 << 48) - 1),
    command=u8,
    app_data=st.binary(max_size=300),
)

_CODE_STRATEGIES = {
    "B": u8,
    "H": st.integers(0, 0xFFFF),
    "I": st.integers(0, 0xFFFF_FFFF),
    "h": st.integers(-0x8000, 0x7FFF),
    "6s": times,
    "31s": st.binary(min_size=31, max_size=31),
}


def _object_strategy(cls: type) -> st.SearchStrategy[object]:
    if cls is SystemConfig:
        return st.builds(SystemConfig, system_type=u8, system_address=u8, raw_description=st.binary(max_size=255))
    if cls is UitdConfig:
        return st.builds(UitdConfig, raw_description=st.binary(max_size=255))
    if cls is SyncTime:
        return st.builds(SyncTime, time=times, reserved=st.none())
    names = [f.name for f in dataclasses.fields(cls)]
    codes = cls._CODES  # type: ignore[attr-defined]
    return st.builds(cls, **{n: _CODE_STRATEGIES[c] for n, c in zip(names, codes, strict=True)})


@st.composite
def units(draw: st.DrawFn) -> ApplicationUnit:
    type_flag = draw(st.sampled_from(sorted(OBJECT_CLASSES)))
    cls = OBJECT_CLASSES[type_flag]
    objects: list[object]
    if cls is SyncTime:
        objects = [draw(st.builds(SyncTime, time=times, reserved=st.none() | u8))]
    else:
        objects = draw(st.lists(_object_strategy(cls), max_size=4))
    return ApplicationUnit(type_flag=type_flag, objects=tuple(objects))  # type: ignore[arg-type]


@PROPS
@given(frames)
def test_frame_round_trip(frame: Frame) -> None:
    raw = encode_frame(frame)
    assert len(raw) == 30 + len(frame.app_data)
    again = decode_frame(raw)
    assert again == frame
    assert again.unit == frame.unit
    assert encode_frame(again) == raw


@PROPS
@given(units())
def test_unit_round_trip(unit: ApplicationUnit) -> None:
    raw = unit.encode()
    assert decode_app_data(raw) == unit
    frame = build_frame(serial=7, time=T_0958_02, source=UITD, destination=CENTRE, command=2, unit=unit)
    if len(raw) <= 1024:
        assert decode_frame(encode_frame(frame)).unit == unit


@PROPS
@given(st.sampled_from(sorted(OBJECT_CLASSES)) | u8, u8, st.binary(max_size=120))
def test_app_data_bytes_round_trip(type_flag: int, count: int, body: bytes) -> None:
    data = bytes((type_flag, count)) + body
    assert encode_app_data(decode_app_data(data)) == data


@st.composite
def chunked(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    raw = draw(data)
    cuts = draw(st.lists(st.integers(0, max(len(raw), 1)), max_size=12))
    return raw, cuts


noisy = st.lists(
    st.binary(max_size=40)
    | st.sampled_from([b"@@", b"##", b"@", *ALL_EXAMPLES])
    | st.sampled_from(ALL_EXAMPLES).map(lambda f: f[: len(f) // 2]),
    max_size=8,
).map(b"".join)


@PROPS
@given(chunked(noisy | st.binary(max_size=400)))
def test_reader_never_raises_and_ignores_chunking(case: tuple[bytes, list[int]]) -> None:
    raw, cuts = case
    whole = _feed_all(FrameReader(max_frame_size=200), raw)
    pieces = _feed_all(FrameReader(max_frame_size=200), raw, cuts)
    assert pieces == whole
    for item in whole:
        assert isinstance(item, Frame | FrameError)
        if isinstance(item, FrameError):
            assert item.reason in REASONS and len(item.data) <= 200
        else:
            assert encode_frame(item) in raw


def _fake_frame_possible(stream: bytes, garbage_len: int) -> bool:
    """Whether a '@@' in the garbage starts a frame that is itself valid and swallows part of the good frame."""
    p = stream.find(b"@@")
    while 0 <= p < garbage_len:
        if len(stream) - p >= 26:
            end = p + 30 + int.from_bytes(stream[p + 24 : p + 26], "little")
            if garbage_len < end <= len(stream):
                try:
                    decode_frame(stream[p:end])
                except UitdError:
                    pass
                else:
                    return True
        p = stream.find(b"@@", p + 1)
    return False


@PROPS
@given(noisy | st.binary(max_size=300), st.sampled_from(ALL_EXAMPLES) | frames.map(encode_frame), st.data())
def test_good_frame_after_garbage_is_decoded(garbage: bytes, good: bytes, data: st.DataObject) -> None:
    stream = garbage + good
    assume(not _fake_frame_possible(stream, len(garbage)))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    out = _feed_all(FrameReader(), stream, cuts)
    frames_out = [x for x in out if isinstance(x, Frame)]
    assert frames_out and frames_out[-1] == decode_frame(good)
    assert out[-1] == frames_out[-1]


@PROPS
@given(frames, times)
def test_answers_swap_addresses_and_keep_serial(frame: Frame, now: UitdTime) -> None:
    for answer, command in ((make_confirm(frame, time=now), 3), (make_deny(frame, time=now), 6)):
        assert (answer.serial, answer.command, answer.app_data) == (frame.serial, command, b"")
        assert (answer.source, answer.destination) == (frame.destination, frame.source)
        assert (answer.version_major, answer.version_minor) == (frame.version_major, frame.version_minor)
        assert decode_frame(encode_frame(answer)) == answer
    assert MAX_FRAME_SIZE == 1054


def test_reader_reason_names_and_noise_of_start_markers() -> None:
    assert {"no_start", "truncated", "bad_length", "oversized", "bad_end", "bad_checksum"} == REASONS
    reader = FrameReader()
    out = reader.feed(b"@" * 300 + EX_UITD_VERSION)
    # every '@@' but the last few claims 0x4040 bytes; the last ones take the frame's bytes as their header
    assert _reasons(out)[-1] == "frame" and set(_reasons(out)[:-1]) == {"bad_length", "truncated"}
    assert reader.close() == [] and reader.close() == []
    assert reader.closed


def test_cut_frame_then_new_frame_in_any_chunking() -> None:
    stream = EX_PART_FIRE[:30] + EX_UITD_TIME + EX_CONFIRM  # the 38-byte frame ends inside the 78 claimed
    whole = _feed_all(FrameReader(), stream)
    assert _reasons(whole) == ["truncated", "frame", "frame"]
    late = _feed_all(FrameReader(), EX_PART_FIRE[:50] + EX_UITD_TIME + EX_CONFIRM)  # ends past the claimed span
    assert _reasons(late) == ["bad_end", "frame", "frame"]
    for cut in range(1, len(stream)):
        assert _feed_all(FrameReader(), stream, [cut, cut + 7]) == whole
