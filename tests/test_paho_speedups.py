"""The cheaper PUBLISH properties decode exactly what paho-mqtt's own Properties decode."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest.paho_speedups import PublishProperties, install

TOPIC = b"firegrid/b01/sd-0001/telemetry"
PAYLOAD = b'{"ts":1795946400000,"seq":4411,"obscuration":0.12}'


def _packet_with(properties: bytes) -> bytes:
    return struct.pack("!H", len(TOPIC)) + TOPIC + struct.pack("!H", 7) + properties + PAYLOAD


def _decode_both(packet: bytes) -> tuple[object, object]:
    """(paho as shipped, with PublishProperties) for one PUBLISH packet at QoS 1."""
    saved = _packet.Properties
    try:
        _packet.Properties = Properties  # type: ignore[misc]
        shipped = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
        _packet.Properties = PublishProperties  # type: ignore[misc]
        fast = _packet.decode_publish(0x32, packet, MQTTProtocolVersion.MQTTv5)
    finally:
        _packet.Properties = saved  # type: ignore[misc]
    return shipped, fast


def _same(shipped: object, fast: object) -> None:
    assert isinstance(fast.properties, Properties)  # type: ignore[attr-defined]
    assert fast.properties.json() == shipped.properties.json()  # type: ignore[attr-defined]
    assert str(fast.properties) == str(shipped.properties)  # type: ignore[attr-defined]
    assert fast.properties.isEmpty() == shipped.properties.isEmpty()  # type: ignore[attr-defined]
    for name in ("dup", "qos", "retain", "topic", "mid", "payload"):
        assert getattr(fast, name) == getattr(shipped, name), name


def test_no_properties() -> None:
    shipped, fast = _decode_both(_packet_with(b"\x00"))
    _same(shipped, fast)
    assert fast.properties.isEmpty()  # type: ignore[attr-defined]


def test_every_publish_property() -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 30
    props.ContentType = "application/json"
    props.ResponseTopic = "firegrid/replies"
    props.CorrelationData = b"\x01\x02"
    props.SubscriptionIdentifier = [3]
    props.TopicAlias = 4
    props.UserProperty = [("fw", "2.1"), ("fw", "2.2"), ("楼", "3")]
    shipped, fast = _decode_both(_packet_with(props.pack()))
    _same(shipped, fast)
    assert fast.properties.UserProperty == [("fw", "2.1"), ("fw", "2.2"), ("楼", "3")]  # type: ignore[attr-defined]


@given(
    expiry=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    content=st.one_of(st.none(), st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)),
    user=st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=3),
)
def test_generated_properties(expiry: int | None, content: str | None, user: list[tuple[str, str]]) -> None:
    props = Properties(PacketTypes.PUBLISH)
    if expiry is not None:
        props.MessageExpiryInterval = expiry
    if content is not None and "\x00" not in content:
        props.ContentType = content
    if user and all("\x00" not in k + v for k, v in user):
        props.UserProperty = user
    shipped, fast = _decode_both(_packet_with(props.pack()))
    _same(shipped, fast)


@pytest.mark.parametrize("block", [b"\xff\xff\xff\xff\x7f", b"\x02\x7f\x00", b"\x04\x01\x01\x01\x01"])
def test_malformed_properties_fail_as_paho_fails(block: bytes) -> None:
    """A malformed length, an unknown identifier, a property given twice: the same exception type from both."""
    errors = []
    for cls in (Properties, PublishProperties):
        saved = _packet.Properties
        _packet.Properties = cls  # type: ignore[misc]
        try:
            _packet.decode_publish(0x32, _packet_with(block), MQTTProtocolVersion.MQTTv5)
        except Exception as exc:
            errors.append(type(exc))
        else:
            errors.append(None)
        finally:
            _packet.Properties = saved  # type: ignore[misc]
    assert errors[0] is not None
    assert errors[0] == errors[1]


def test_a_reused_instance_is_cleared_like_paho_clears_it() -> None:
    props = PublishProperties(PacketTypes.PUBLISH)
    props.ContentType = "text/plain"
    props.unpack(b"\x00")
    assert props.isEmpty()


def test_install_is_idempotent_and_used_by_decode_publish() -> None:
    assert install()
    assert install()
    decoded = _packet.decode_publish(0x32, _packet_with(b"\x00"), MQTTProtocolVersion.MQTTv5)
    assert type(decoded.properties) is PublishProperties
