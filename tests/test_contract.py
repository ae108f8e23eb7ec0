"""The telemetry contract (docs/telemetry.md): every rejection reason, batches, both timestamp forms, and property
tests that no input raises anything but a rejection."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.ingest.contract import (
    MAX_BATCH,
    MAX_PAYLOAD_BYTES,
    SAMPLE_MODELS,
    TOPIC_CACHE_SIZE,
    DecodePolicy,
    Decoder,
    Reason,
    Rejected,
    _Sample,
    parse_topic,
)
from rules.types import DeviceEvent, DeviceKind, DeviceRef, EventType, Reading, StatusChange

NOW = 1_790_000_000_000
REGISTRY = {
    "sd-1": DeviceRef(building="b1", device="sd-1", kind="smoke", floor=3, grid="g1"),
    "ht-1": DeviceRef(building="b1", device="ht-1", kind="heat", floor=3, grid="g1"),
    "ex-1": DeviceRef(building="b1", device="ex-1", kind="extinguisher", floor=1, grid="g1"),
    "cp-1": DeviceRef(building="b1", device="cp-1", kind="call_point", floor=1, grid="g1"),
}
DECODER = Decoder(prefix="firegrid", registry=REGISTRY)
STRICT = Decoder(prefix="firegrid", registry=REGISTRY, policy=DecodePolicy(allow_unregistered=False))


def decode(device: str, channel: str, payload: object, *, building: str = "b1", decoder: Decoder = DECODER):
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decoder.decode(f"firegrid/{building}/{device}/{channel}", raw, received_ms=NOW)


def reason_of(device: str, channel: str, payload: object, **kwargs) -> Reason:
    with pytest.raises(Rejected) as info:
        decode(device, channel, payload, **kwargs)
    assert info.value.detail, "a rejection always says what is wrong"
    return info.value.reason


# --- accepted -------------------------------------------------------------------------------------------------------


def test_each_kind_decodes_its_metrics() -> None:
    smoke = decode("sd-1", "telemetry", {"ts": NOW - 1000, "seq": 7, "obscuration": 3.5, "alarm": True, "battery": 80})
    (reading,) = smoke.inputs
    assert isinstance(reading, Reading)
    assert reading.ts_ms == NOW - 1000 and reading.seq == 7
    assert dict(reading.values) == {"obscuration": 3.5, "alarm": True, "battery": 80}
    assert reading.ref.floor == 3 and reading.ref.grid == "g1" and reading.ref.registered
    heat = decode("ht-1", "telemetry", {"celsius": 21.5, "rssi": -71, "tamper": False})
    assert dict(heat.inputs[0].values) == {"celsius": 21.5, "rssi": -71, "tamper": False}
    ext = decode("ex-1", "telemetry", {"pressure_mpa": 1.2, "present": True, "obstructed": False, "fault": "E12"})
    assert dict(ext.inputs[0].values) == {
        "pressure_mpa": 1.2,
        "present": True,
        "obstructed": False,
        "fault": "E12",
    }
    heartbeat = decode("cp-1", "telemetry", {"battery": 99})
    assert dict(heartbeat.inputs[0].values) == {"battery": 99}


def test_absent_timestamp_means_receipt_time() -> None:
    assert decode("sd-1", "telemetry", {"obscuration": 0.1}).inputs[0].ts_ms == NOW


def test_rfc3339_timestamps_with_offsets() -> None:
    when = datetime.fromtimestamp((NOW - 60_000) / 1000, tz=UTC)
    for text in (when.isoformat(), when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), when.astimezone().isoformat()):
        assert decode("sd-1", "telemetry", {"ts": text, "obscuration": 0}).inputs[0].ts_ms == NOW - 60_000


def test_batch_of_buffered_samples_keeps_order() -> None:
    batch = [{"ts": NOW - 10_000 + i, "seq": i, "celsius": 20 + i / 10} for i in range(MAX_BATCH)]
    decoded = decode("ht-1", "telemetry", batch)
    assert [r.seq for r in decoded.inputs] == list(range(MAX_BATCH))


def test_future_timestamp_is_replaced_and_counted() -> None:
    decoded = decode("sd-1", "telemetry", [{"ts": NOW + 3_600_000, "obscuration": 1}, {"ts": NOW, "obscuration": 1}])
    assert decoded.clock_skew == 1
    assert [r.ts_ms for r in decoded.inputs] == [NOW, NOW]
    assert decode("sd-1", "telemetry", {"ts": NOW + 299_000, "obscuration": 1}).clock_skew == 0


def test_events_and_status() -> None:
    (event,) = decode("cp-1", "event", {"ts": NOW, "type": "pressed", "detail": "lobby"}).inputs
    assert isinstance(event, DeviceEvent) and event.type == "pressed" and event.detail == "lobby"
    (status,) = decode("sd-1", "status", b"offline").inputs
    assert isinstance(status, StatusChange) and not status.online
    assert decode("sd-1", "status", b"online").inputs[0].online


def test_unregistered_device_with_kind_is_accepted_as_such() -> None:
    (reading,) = decode("new-7", "telemetry", {"kind": "heat", "celsius": 30}).inputs
    assert reading.ref.kind == "heat" and not reading.ref.registered
    assert reason_of("new-7", "telemetry", {"kind": "heat", "celsius": 30}, decoder=STRICT) == Reason.UNKNOWN_DEVICE


def test_drill_flag_is_carried() -> None:
    assert decode("sd-1", "telemetry", {"obscuration": 9, "drill": True}).inputs[0].drill


# --- every rejection reason -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "channel", "payload", "reason"),
    [
        ("sd-1", "telemetry", b"\xff\xfe{}", Reason.NOT_UTF8),
        ("sd-1", "telemetry", b"{obscuration: 1}", Reason.NOT_JSON),
        ("sd-1", "telemetry", b"[" * 5000 + b"]" * 5000, Reason.NOT_JSON),
        ("sd-1", "telemetry", b"42", Reason.WRONG_SHAPE),
        ("sd-1", "telemetry", [], Reason.WRONG_SHAPE),
        ("sd-1", "telemetry", [{"obscuration": 1}, 5], Reason.WRONG_SHAPE),
        ("cp-1", "event", [{"type": "pressed"}], Reason.WRONG_SHAPE),
        ("cp-1", "event", {"detail": "no type"}, Reason.WRONG_SHAPE),
        ("sd-1", "status", b"maybe", Reason.WRONG_SHAPE),
        ("sd-1", "telemetry", [{"obscuration": 1}] * (MAX_BATCH + 1), Reason.TOO_MANY),
        ("sd-1", "telemetry", {"obscuration": "3.5"}, Reason.WRONG_TYPE),
        ("sd-1", "telemetry", {"alarm": 1}, Reason.WRONG_TYPE),
        ("sd-1", "telemetry", {"seq": 1.5, "obscuration": 1}, Reason.WRONG_TYPE),
        ("sd-1", "telemetry", {"obscuration": 100.5}, Reason.OUT_OF_RANGE),
        ("ht-1", "telemetry", {"celsius": -60}, Reason.OUT_OF_RANGE),
        ("ex-1", "telemetry", {"pressure_mpa": 7}, Reason.OUT_OF_RANGE),
        ("sd-1", "telemetry", {"battery": 101, "obscuration": 1}, Reason.OUT_OF_RANGE),
        ("sd-1", "telemetry", b'{"obscuration": NaN}', Reason.NON_FINITE),
        ("ht-1", "telemetry", b'{"celsius": Infinity}', Reason.NON_FINITE),
        ("ht-1", "telemetry", b'{"celsius": -1e999}', Reason.NON_FINITE),
        ("sd-1", "telemetry", {"celsius": 20}, Reason.UNKNOWN_METRIC),
        ("cp-1", "telemetry", {"obscuration": 1}, Reason.UNKNOWN_METRIC),
        ("cp-1", "event", {"type": "exploded"}, Reason.UNKNOWN_EVENT),
        ("sd-1", "telemetry", {"ts": "yesterday", "obscuration": 1}, Reason.BAD_TIMESTAMP),
        ("sd-1", "telemetry", {"ts": "2026-01-01T00:00:00", "obscuration": 1}, Reason.BAD_TIMESTAMP),
        ("sd-1", "telemetry", {"ts": -5, "obscuration": 1}, Reason.BAD_TIMESTAMP),
        ("sd-1", "telemetry", {"ts": NOW - 365 * 86_400_000, "obscuration": 1}, Reason.STALE),
        ("ghost", "telemetry", {"obscuration": 1}, Reason.UNKNOWN_DEVICE),
        ("sd-1", "telemetry", {"device": "sd-2", "obscuration": 1}, Reason.SPOOFED_ID),
        ("cp-1", "event", {"device": "cp-9", "type": "pressed"}, Reason.SPOOFED_ID),
    ],
)
def test_rejection_reasons(device: str, channel: str, payload: object, reason: Reason) -> None:
    assert reason_of(device, channel, payload) == reason


def test_oversize() -> None:
    payload = b'{"fault": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'
    assert reason_of("sd-1", "telemetry", payload) == Reason.OVERSIZE


def test_wrong_building_for_a_registered_device() -> None:
    assert reason_of("sd-1", "telemetry", {"obscuration": 1}, building="b2") == Reason.WRONG_BUILDING


@pytest.mark.parametrize(
    "topic",
    [
        "firegrid/b1/sd-1",
        "firegrid/b1/sd-1/telemetry/extra",
        "other/b1/sd-1/telemetry",
        "firegrid/b1/sd-1/command",
        "firegrid/b 1/sd-1/telemetry",
        "firegrid/b1/+/telemetry",
        "firegrid/b1/#/telemetry",
        "firegrid//sd-1/telemetry",
        "firegrid/b1/" + "x" * 65 + "/telemetry",
        "firegrid/楼1/sd-1/telemetry",
    ],
)
def test_bad_topics(topic: str) -> None:
    with pytest.raises(Rejected) as info:
        DECODER.decode(topic, b"{}", received_ms=NOW)
    assert info.value.reason == Reason.BAD_TOPIC


def test_topic_parts() -> None:
    topic = parse_topic("fg/B-7/dev_1/event", "fg")
    assert (topic.building, topic.device, topic.channel) == ("B-7", "dev_1", "event")


def test_rejection_carries_the_device() -> None:
    with pytest.raises(Rejected) as info:
        decode("sd-1", "telemetry", {"obscuration": -1})
    assert (info.value.building, info.value.device) == ("b1", "sd-1")


# --- properties -----------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)
metric_names = st.sampled_from(
    [
        "ts",
        "seq",
        "obscuration",
        "alarm",
        "celsius",
        "pressure_mpa",
        "present",
        "obstructed",
        "battery",
        "rssi",
        "tamper",
        "fault",
        "kind",
        "device",
        "drill",
        "type",
        "detail",
        "extra",
    ]
)
samples = st.dictionaries(metric_names, json_values, max_size=8)
devices = st.sampled_from([*REGISTRY, "ghost", "new-1"])
channels = st.sampled_from(["telemetry", "event", "status", "bogus"])


def _safe_decode(topic: str, payload: bytes) -> None:
    try:
        decoded = DECODER.decode(topic, payload, received_ms=NOW)
    except Rejected as rej:
        assert isinstance(rej.reason, Reason)
        return
    for item in decoded.inputs:
        assert item.ts_ms <= NOW + DECODER._policy.max_future_skew_ms


@settings(max_examples=400, deadline=None)
@given(device=devices, channel=channels, body=st.one_of(samples, st.lists(samples, max_size=4), json_values))
def test_random_json_never_raises_anything_but_a_rejection(device: str, channel: str, body: object) -> None:
    try:
        payload = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        payload = json.dumps(body, allow_nan=True).encode()
    _safe_decode(f"firegrid/b1/{device}/{channel}", payload)


@settings(max_examples=400, deadline=None)
@given(topic=st.text(max_size=80), payload=st.binary(max_size=300))
def test_random_bytes_never_raise_anything_but_a_rejection(topic: str, payload: bytes) -> None:
    _safe_decode(topic, payload)
    _safe_decode("firegrid/b1/sd-1/telemetry", payload)


@settings(max_examples=200, deadline=None)
@given(obscuration=st.floats(min_value=0, max_value=100), battery=st.integers(min_value=0, max_value=100))
def test_valid_smoke_samples_always_decode(obscuration: float, battery: int) -> None:
    (reading,) = decode("sd-1", "telemetry", {"obscuration": obscuration, "battery": battery}).inputs
    assert reading.values["obscuration"] == obscuration


def _verdict(topic: str, payload: bytes) -> tuple[object, ...]:
    try:
        decoded = DECODER.decode(topic, payload, received_ms=NOW)
    except Rejected as rej:
        return ("rejected", rej.reason, rej.detail, rej.building, rej.device)
    return ("accepted", decoded.inputs, decoded.clock_skew)


# samples close to valid, so that the checks after the model (device, kind, time) are reached as well
plausible = st.sampled_from(
    [
        *(0, 1, 2.5, 87, -71, 101, -1, True, False, None, "E12", "sd-1", "sd-2", "smoke", "heat", "x" * 65),
        *(NOW - 1000, NOW + 3_600_000, NOW - 365 * 86_400_000, "2026-09-21T10:00:00+08:00", "2026-09-21T10:00:00"),
    ]
)
plausible_samples = st.dictionaries(metric_names, plausible, max_size=6)
ODD = Decoder(prefix="firegrid", registry={**REGISTRY, "odd-1": DeviceRef(building="b1", device="odd-1", kind="pump")})


def _verdict(topic: str, payload: bytes, decoder: Decoder = DECODER) -> tuple[object, ...]:
    try:
        decoded = decoder.decode(topic, payload, received_ms=NOW)
    except Rejected as rej:
        return ("rejected", rej.reason, rej.detail, rej.building, rej.device)
    return ("accepted", decoded.inputs, decoded.clock_skew)


def _alike(device: str, sample: object, building: str = "b1", decoder: Decoder = DECODER) -> tuple[object, ...]:
    topic = f"firegrid/{building}/{device}/telemetry"
    try:
        alone, batch = orjson.dumps(sample), orjson.dumps([sample])
    except (TypeError, orjson.JSONEncodeError):
        alone, batch = json.dumps(sample).encode(), json.dumps([sample]).encode()
    one = _verdict(topic, alone, decoder)
    assert one == _verdict(topic, batch, decoder), sample
    return one


@settings(max_examples=600, deadline=None)
@given(
    device=st.sampled_from([*REGISTRY, "ghost", "new-1"]),
    building=st.sampled_from(["b1", "b1", "b2"]),
    sample=st.one_of(samples, plausible_samples),
)
def test_one_sample_and_a_batch_of_one_are_judged_alike(device: str, building: str, sample: dict[str, object]) -> None:
    """The decoder has an unrolled path for the usual single-object message; it must agree with the batch path on
    every verdict, reason and detail (a batch of one names no sample index)."""
    _alike(device, sample, building)
    _alike(device, sample, building, STRICT)


@pytest.mark.parametrize(
    ("device", "sample", "outcome"),
    [
        ("sd-1", {"ts": NOW - 5, "seq": 3, "obscuration": 2.5, "alarm": True, "battery": 80, "rssi": -60}, "accepted"),
        ("ht-1", {"ts": "2026-09-21T10:00:00+08:00", "celsius": 21, "device": "ht-1", "kind": "heat"}, "accepted"),
        ("ex-1", {"ts": NOW + 3_600_000, "pressure_mpa": 1.1, "present": False, "drill": True}, "accepted"),
        ("new-1", {"kind": "heat", "celsius": 30}, "accepted"),
        ("sd-1", {"kind": "heat", "obscuration": 1}, Reason.WRONG_TYPE),
        ("sd-1", {"kind": 5, "obscuration": 1}, Reason.WRONG_TYPE),
        ("sd-1", {"device": "sd-2", "obscuration": 1}, Reason.SPOOFED_ID),
        ("sd-1", {"device": "sd-2", "obscuration": 101}, Reason.OUT_OF_RANGE),
        ("sd-1", {"ts": -1}, Reason.BAD_TIMESTAMP),
        ("sd-1", {"ts": "2026-09-21T10:00:00"}, Reason.BAD_TIMESTAMP),
        ("sd-1", {"ts": NOW - 365 * 86_400_000}, Reason.STALE),
        ("ghost", {"obscuration": 1}, Reason.UNKNOWN_DEVICE),
        ("odd-1", {"obscuration": 1}, Reason.UNKNOWN_DEVICE),
    ],
)
def test_each_check_alike_through_both_paths(device: str, sample: dict[str, object], outcome: object) -> None:
    verdict = _alike(device, sample, decoder=ODD)
    assert verdict[0] == "accepted" if outcome == "accepted" else verdict[1] == outcome, verdict
    elsewhere = _alike(device, sample, building="b2", decoder=ODD)
    if device in REGISTRY:  # a registered device under another building (only a bad "kind" is judged before that)
        assert elsewhere[1] in (Reason.WRONG_BUILDING, Reason.WRONG_TYPE), elsewhere


def test_skew_counted_alike_through_both_paths() -> None:
    verdict = _alike("ex-1", {"ts": NOW + 3_600_000, "pressure_mpa": 1.1})
    assert verdict[0] == "accepted" and verdict[2] == 1


@settings(max_examples=1000, deadline=None)
@given(payload=st.one_of(st.binary(max_size=40), st.binary(max_size=40).map(lambda b: b'"' + b + b'"')))
def test_orjson_refuses_whatever_is_not_utf8(payload: bytes) -> None:
    """The decoder leaves the UTF-8 check to orjson (which checks the whole buffer before parsing) and tells
    ``not_utf8`` apart only when orjson refused; this holds orjson to that."""
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    payload.decode("utf-8")


@pytest.mark.parametrize(
    "payload",
    [
        b'{"fault": "\xff"}',
        b'{"obscuration": 1}\xff',
        b'"\xed\xa0\x80"',
        b'"\xc0\xaf"',
        b'"\xf4\x90\x80\x80"',
        b"1 \x80",
    ],
)
def test_invalid_utf8_anywhere_is_not_utf8(payload: bytes) -> None:
    assert reason_of("sd-1", "telemetry", payload) == Reason.NOT_UTF8
    assert reason_of("cp-1", "event", payload) == Reason.NOT_UTF8


def test_topic_cache_is_bounded_and_never_changes_a_verdict() -> None:
    decoder = Decoder(prefix="firegrid", registry=REGISTRY)
    ok = json.dumps({"obscuration": 1}).encode()
    for _ in range(3):  # a bad topic is parsed (and rejected) every time, never remembered
        with pytest.raises(Rejected) as info:
            decoder.decode("firegrid/b1/sd 1/telemetry", ok, received_ms=NOW)
        assert info.value.reason == Reason.BAD_TOPIC
    assert decoder.decode("firegrid/b1/sd-1/telemetry", ok, received_ms=NOW).topic.device == "sd-1"
    for i in range(TOPIC_CACHE_SIZE + 10):  # strangers fill the cache; it is emptied, not grown
        with pytest.raises(Rejected):
            decoder.decode(f"firegrid/b1/x{i}/telemetry", ok, received_ms=NOW)
        assert len(decoder._topics) <= TOPIC_CACHE_SIZE
    (reading,) = decoder.decode("firegrid/b1/sd-1/telemetry", ok, received_ms=NOW).inputs
    assert reading.ref.device == "sd-1" and dict(reading.values) == {"obscuration": 1}
    with pytest.raises(Rejected) as info:
        decoder.decode("firegrid/b2/sd-1/telemetry", ok, received_ms=NOW)
    assert (info.value.reason, info.value.building) == (Reason.WRONG_BUILDING, "b2")
    other = Decoder(prefix="fg", registry=REGISTRY)  # the cache is per decoder: another prefix judges for itself
    with pytest.raises(Rejected) as info:
        other.decode("firegrid/b1/sd-1/telemetry", ok, received_ms=NOW)
    assert info.value.reason == Reason.BAD_TOPIC


# --- the written contract agrees with the models --------------------------------------------------------------------

DOC = (Path(__file__).resolve().parent.parent / "docs" / "telemetry.md").read_text(encoding="utf-8")


def _table_rows(heading: str) -> list[list[str]]:
    section = DOC.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    return [[cell.strip().strip("`") for cell in row.strip("|").split("|")] for row in rows[1:]]


def test_every_rejection_reason_is_documented_and_nothing_else() -> None:
    documented = {row[0] for row in _table_rows("## Rejections")}
    assert documented == {reason.value for reason in Reason}


def test_every_metric_of_every_kind_is_documented() -> None:
    per_kind = {(row[0], row[1]) for row in _table_rows("and the metrics of the device's kind")}
    common = {row[0] for row in _table_rows("## `telemetry`")}
    for kind, model in SAMPLE_MODELS.items():
        for metric in model.metrics:
            assert (kind.value, metric) in per_kind or metric in common, f"{kind.value}.{metric} is not in the doc"
    for kind, metric in per_kind:
        if metric != "—":
            assert metric in SAMPLE_MODELS[DeviceKind(kind)].metrics, f"the doc lists {kind}.{metric}; the model not"
    # every field the models accept besides the metrics is documented as a common field
    assert set(_Sample.model_fields) <= common


def test_event_types_in_the_doc_match_the_model() -> None:
    section = DOC.split("## `event`", 1)[1].split("\n## ", 1)[0]
    for event_type in EventType:
        assert f"`{event_type.value}`" in section
