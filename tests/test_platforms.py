"""The pure parts of the other paths: OneNET/CTWing pushes and UITD frames -> contract messages, the signed text of a
OneNET push, and the config's cross-checks of the ``uitd`` and ``ingest`` sections."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, parse_config
from gateway.ingest.contract import Decoder, Reason, Rejected, policy_from_config, registry_from_config
from gateway.ingest.platforms import PlatformMap, ctwing_messages, onenet_messages, raw_member
from gateway.ingest.uitd import decode_frame
from gateway.ingest.uitd_map import PanelMap
from testkit.uitd_panel import FAULT, FIRE_ALARM, NORMAL, POWER_FAULT, SUPERVISORY, part_status_frame

BASE: dict[str, Any] = {
    "buildings": [{"id": "b1", "name": "B1", "grid": "g1", "floors": 10}],
    "devices": [
        {"id": "sd-1", "building": "b1", "kind": "smoke", "floor": 2},
        {"id": "pp-1", "building": "b1", "kind": "panel_point", "floor": 3, "location": "3F"},
    ],
}
CONFIG = parse_config(
    {
        **BASE,
        "uitd": {
            "listen": "127.0.0.1:9025",
            "panels": [
                {
                    "address": 77,
                    "building": "b1",
                    "points": [{"system_type": 1, "system_address": 1, "part_address": 4, "device": "pp-1"}],
                }
            ],
        },
        "ingest": {
            "onenet": {"token": "t", "devices": [{"id": "42", "device": "sd-1"}]},
            "ctwing": {"token": "t", "devices": [{"id": "abc", "device": "sd-1"}]},
        },
    }
)
DECODER = Decoder(prefix="firegrid", registry=registry_from_config(CONFIG), policy=policy_from_config(CONFIG))
ONENET = PlatformMap(config=CONFIG, devices=CONFIG.ingest.onenet.devices, fields=CONFIG.ingest.onenet.datastreams)  # type: ignore[union-attr]
CTWING = PlatformMap(config=CONFIG, devices=CONFIG.ingest.ctwing.devices, fields=CONFIG.ingest.ctwing.fields)  # type: ignore[union-attr]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
PUSH_KEYS = st.sampled_from(["type", "dev_id", "imei", "ds_id", "at", "value", "status", "messageType", "deviceId"])
PUSHES = st.dictionaries(PUSH_KEYS | st.text(max_size=6), JSON, max_size=6)


@pytest.mark.parametrize(
    "body",
    [
        b'{"msg":{"a":1},"nonce":"x"}',
        b'{ "nonce" : "x" ,\n  "msg" :  {"a" : [1, 2.50, "\\u6d88"]} , "msg_signature":"s"}',
        b'{"msg":"{\\"a\\":1}","nonce":"x"}',
    ],
)
def test_raw_member_is_the_text_as_sent(body: bytes) -> None:
    text = raw_member(body, "msg")
    assert text is not None
    assert json.loads(text) == json.loads(body)["msg"]
    assert text.encode() in body  # byte for byte, spacing and escapes included


def test_raw_member_of_what_is_not_an_object_is_none() -> None:
    assert raw_member(b"[1]", "msg") is None
    assert raw_member(b'{"nonce":"x"}', "msg") is None
    assert raw_member(b"\xff\xfe", "msg") is None
    assert raw_member(b'{"msg":', "msg") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps({"msg": v, "x": v}).encode()))
def test_raw_member_never_raises(body: bytes) -> None:
    raw_member(body, "msg")


@settings(max_examples=300, deadline=None)
@given(JSON | PUSHES | st.lists(PUSHES, max_size=4))
def test_platform_pushes_never_raise_and_every_message_is_judged_by_the_contract(push: Any) -> None:
    for translated in (onenet_messages(push, mapping=ONENET), ctwing_messages(push, mapping=CTWING)):
        assert all(isinstance(r, Rejected) for r in translated.rejected)
        for message in translated.messages:
            topic = f"firegrid/{message.building}/{message.device}/{message.channel}"
            try:
                DECODER.decode(topic, message.payload, received_ms=1_796_365_805_000)
            except Rejected:
                pass  # judged like an MQTT payload: a named reason, never anything else


def test_onenet_types_map_to_readings_and_status() -> None:
    msg = [
        {"type": 1, "dev_id": 42, "ds_id": "alarm", "at": 1_796_365_805_000, "value": "1"},
        {"type": 1, "imei": "42", "ds_id": "battery", "at": 1_796_365_805_001, "value": "87.5"},
        {"type": 1, "dev_id": 42, "ds_id": "3200_0_5750", "at": 1_796_365_805_002, "value": 3},  # not mapped: ignored
        {"type": 2, "dev_id": 42, "status": 0, "login_type": 10, "at": 1_796_365_805_003},
        {"type": 1, "dev_id": 7, "ds_id": "alarm", "value": 1},
    ]
    translated = onenet_messages(msg, mapping=ONENET)
    assert [(m.device, m.channel, orjson.loads(m.payload)) for m in translated.messages[:2]] == [
        ("sd-1", "telemetry", {"ts": 1_796_365_805_000, "alarm": True}),
        ("sd-1", "telemetry", {"ts": 1_796_365_805_001, "battery": 87.5}),
    ]
    assert translated.messages[2].payload == b"offline"
    assert [r.reason for r in translated.rejected] == [Reason.UNMAPPED_DEVICE]


def test_ctwing_reports_map_by_device_id_or_imei() -> None:
    report = {
        "messageType": "dataReport",
        "IMEI": "abc",
        "timestamp": 5,
        "payload": {"serviceData": {"smoke_state": 1}},
    }
    (message,) = ctwing_messages(report, mapping=CTWING).messages
    assert orjson.loads(message.payload) == {"ts": 5, "alarm": True}
    online = ctwing_messages(
        {"messageType": "deviceOnlineOfflineReport", "deviceId": "abc", "eventType": 1}, mapping=CTWING
    )
    assert online.messages[0].payload == b"online"
    (rejected,) = ctwing_messages(
        {"messageType": "dataReport", "deviceId": "abc", "payload": 3}, mapping=CTWING
    ).rejected
    assert rejected.reason == Reason.WRONG_SHAPE


@pytest.mark.parametrize(
    ("status", "states"),
    [
        (NORMAL, {"fire_alarm": False, "part_fault": False, "supervisory": False, "power_fault": False}),
        (FIRE_ALARM, {"fire_alarm": True, "part_fault": False, "supervisory": False, "power_fault": False}),
        (FAULT | POWER_FAULT, {"fire_alarm": False, "part_fault": True, "supervisory": False, "power_fault": True}),
        (SUPERVISORY, {"fire_alarm": False, "part_fault": False, "supervisory": True, "power_fault": False}),
    ],
)
def test_part_status_bits_become_panel_point_states(status: int, states: dict[str, bool]) -> None:
    panel_map = PanelMap(config=CONFIG.uitd, prefix="firegrid")
    frame = decode_frame(part_status_frame(serial=9, source=77, parts=[(1, 1, 30, 4, status), (1, 1, 30, 5, status)]))
    panel = panel_map.panel(77)
    assert panel is not None
    meaning = panel_map.meaning(frame, panel)
    message = meaning.messages[0]
    assert message.topic == "firegrid/b1/pp-1/telemetry"
    sample = orjson.loads(message.payload)
    assert {k: sample[k] for k in states} == states and sample["seq"] == 9
    (reading,) = DECODER.decode(message.topic, message.payload, received_ms=sample["ts"]).inputs
    assert reading.ref.floor == 3
    # part 5 is not mapped: counted; its fire alarm (only) still goes on, as an unregistered point of the building
    assert [r.reason for r in meaning.rejected] == [Reason.UNMAPPED_POINT]
    expected = ["pp-1", "uitd77-1-1-5"] if status & FIRE_ALARM else ["pp-1"]
    assert [m.device for m in meaning.messages] == expected


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"uitd": {"panels": [{"address": 1, "building": "b9"}]}}, "uitd.panels[0].building: unknown building 'b9'"),
        (
            {
                "uitd": {
                    "panels": [
                        {
                            "address": 1,
                            "building": "b1",
                            "points": [{"system_type": 1, "system_address": 1, "part_address": 1, "device": "sd-1"}],
                        }
                    ]
                }
            },
            "uitd.panels[0].points[0].device: 'sd-1' must be a panel_point of building 'b1'",
        ),
        (
            {"uitd": {"panels": [{"address": 1, "building": "b1"}, {"address": 1, "building": "b1"}]}},
            "uitd.panels[1].address: duplicate UITD address 1",
        ),
        (
            {"ingest": {"onenet": {"token": "t", "devices": [{"id": "1", "device": "nope"}]}}},
            "ingest.onenet.devices[0].device: unknown device 'nope'",
        ),
        ({"uitd": {"listen": "nowhere"}}, "uitd.listen"),
        ({"uitd": {"timezone": "Mars/Olympus"}}, "uitd.timezone"),
        ({"http": {"tokens": [{"name": "v", "token": "x", "role": "pusher"}]}}, "http.tokens[0].role"),
    ],
)
def test_config_cross_checks(section: dict[str, Any], problem: str) -> None:
    with pytest.raises((ConfigError, ValueError)) as info:
        parse_config({**BASE, **section})
    assert problem in str(info.value)


def test_every_framing_reason_of_the_codec_is_a_rejection_reason() -> None:
    from gateway.ingest.uitd import REASONS

    assert {r for r in REASONS} <= {r.value for r in Reason}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120), st.integers(0, 0xFFFF))
def test_any_application_data_maps_without_raising(app_data: bytes, serial: int) -> None:
    from gateway.ingest.uitd import Command, Frame, UitdTime

    frame = Frame(
        serial=serial,
        version_major=1,
        version_minor=0,
        time=UitdTime(second=0, minute=0, hour=0, day=1, month=1, year=2026),
        source=77,
        destination=1,
        command=Command.SEND_DATA,
        app_data=bytes([2, max(1, len(app_data) // 46)]) + app_data,
    )
    panel_map = PanelMap(config=CONFIG.uitd, prefix="firegrid")
    panel = panel_map.panel(77)
    assert panel is not None
    meaning = panel_map.meaning(frame, panel)
    for message in meaning.messages:
        try:
            DECODER.decode(message.topic, message.payload, received_ms=1_796_365_805_000)
        except Rejected:
            pass
