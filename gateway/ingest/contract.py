"""The telemetry contract: topics and payloads devices publish, and the decoder that judges them.

The written contract is ``docs/telemetry.md``; these models are its enforcement and must agree with it.  The decoder
is pure (no I/O, no clock: the receive time is passed in) and never raises anything but :class:`Rejected`, whatever
bytes arrive — a malformed payload is a counted rejection with a named reason, never a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from common.ids import ID_PATTERN, ID_REGEX
from gateway.config import FiregridConfig
from rules.types import (
    DeviceEvent,
    DeviceKind,
    DeviceRef,
    EventType,
    Input,
    MetricValue,
    Reading,
    StatusChange,
)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_BATCH = 1000
Channel = Literal["telemetry", "event", "status"]
CHANNELS: tuple[Channel, ...] = ("telemetry", "event", "status")
_ID_RE = re.compile(ID_REGEX)  # a compiled regex of its own: re.match on the hot path, no pydantic call per id


class Reason(StrEnum):
    """Why a message was rejected.  These names are counted in metrics and shown by ``GET /api/v1/rejections``."""

    BAD_TOPIC = "bad_topic"  # not {prefix}/{building}/{device}/{channel} with valid ids and a known channel
    OVERSIZE = "oversize"  # payload larger than 64 KiB
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"  # includes nesting deeper than the parser allows
    WRONG_SHAPE = "wrong_shape"  # not an object (or array of objects), or a status that is not online/offline
    TOO_MANY = "too_many"  # a batch of more than 1000 samples
    WRONG_TYPE = "wrong_type"  # a field of the wrong JSON type ("3" where a number belongs)
    OUT_OF_RANGE = "out_of_range"
    NON_FINITE = "non_finite"  # NaN or infinity
    UNKNOWN_METRIC = "unknown_metric"  # a field the device's kind does not have
    UNKNOWN_EVENT = "unknown_event"  # an event type outside the contract
    BAD_TIMESTAMP = "bad_timestamp"  # unparseable, negative, or an RFC 3339 string without an offset
    STALE = "stale"  # older than contract.max_age_s
    UNKNOWN_DEVICE = "unknown_device"  # not in the registry (and unregistered devices are off, or no "kind" given)
    SPOOFED_ID = "spoofed_id"  # the payload names another device than the topic
    WRONG_BUILDING = "wrong_building"  # a registered device publishing under another building
    FOREIGN_BUILDING = "foreign_building"  # a building another gateway owns (mqtt.buildings)
    DUPLICATE = "duplicate"  # the same (device, seq, values) again inside the replay window (judged by the gateway)
    # Other sources than MQTT (docs/telemetry.md, "Other sources").  GB/T 26875.3 framing, as the UITD codec names it:
    NO_START = "no_start"  # bytes outside any @@ ... ## frame
    TRUNCATED = "truncated"  # a frame that stopped before its end
    BAD_LENGTH = "bad_length"  # a length field over the standard's 1024 bytes
    OVERSIZED = "oversized"  # a frame over uitd.max_frame_bytes
    BAD_END = "bad_end"  # no ## where the length field puts it
    BAD_CHECKSUM = "bad_checksum"  # the byte sum does not match
    UNKNOWN_PANEL = "unknown_panel"  # a UITD address that is not in uitd.panels
    UNMAPPED_POINT = "unmapped_point"  # a panel part that is not in its panel's points (and register_parts is off)
    TOO_MANY_CONNECTIONS = "too_many_connections"  # a UITD connection over uitd.max_connections, closed at once
    BAD_SIGNATURE = "bad_signature"  # an IoT platform push whose signature or token is wrong or missing
    UNMAPPED_DEVICE = "unmapped_device"  # an IoT platform's device id or IMEI that ingest.*.devices does not map


class Rejected(Exception):
    """A message broke the contract.  ``reason`` is one of :class:`Reason`; ``detail`` says what exactly."""

    def __init__(self, reason: Reason, detail: str, *, building: str | None = None, device: str | None = None):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.building = building
        self.device = device


@dataclass(frozen=True, slots=True)
class Topic:
    prefix: str
    building: str
    device: str
    channel: Channel


def parse_topic(topic: str, prefix: str) -> Topic:
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != prefix:
        raise Rejected(Reason.BAD_TOPIC, f"expected {prefix}/{{building}}/{{device}}/{{channel}}, got {topic[:200]!r}")
    _, building, device, channel = parts
    if not _ID_RE.match(building) or not _ID_RE.match(device):
        raise Rejected(Reason.BAD_TOPIC, f"ids must match {ID_PATTERN}: {topic[:200]!r}")
    if channel not in CHANNELS:
        raise Rejected(Reason.BAD_TOPIC, f"channel must be one of {', '.join(CHANNELS)}, got {channel[:64]!r}")
    return Topic(prefix, building, device, channel)


# --- payload models -------------------------------------------------------------------------------------------------

Percent = Annotated[float, Field(ge=0, le=100)]
ShortText = Annotated[str, StringConstraints(max_length=64)]


class _Sample(BaseModel):
    """Fields every telemetry sample may carry, whatever the device kind."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)
    metrics: ClassVar[tuple[str, ...]] = ()

    ts: int | str | None = None  # epoch ms, or RFC 3339; absent: time of receipt
    seq: int | None = Field(default=None, ge=0)
    device: str | None = None  # optional; must equal the topic's device
    kind: Annotated[DeviceKind, Field(strict=False)] | None = None  # only needed by unregistered devices
    drill: bool = False  # set by firegrid's simulator for verification drills
    battery: Percent | None = None
    rssi: Annotated[float, Field(ge=-150, le=20)] | None = None
    tamper: bool | None = None
    fault: ShortText | None = None


class SmokeSample(_Sample):
    metrics = ("obscuration", "alarm", "battery", "rssi", "tamper", "fault")
    obscuration: Annotated[float, Field(ge=0, le=100)] | None = None  # %/m
    alarm: bool | None = None  # the detector's own decision


class HeatSample(_Sample):
    metrics = ("celsius", "battery", "rssi", "tamper", "fault")
    celsius: Annotated[float, Field(ge=-50, le=1000)] | None = None


class ExtinguisherSample(_Sample):
    metrics = ("pressure_mpa", "present", "obstructed", "battery", "rssi", "tamper", "fault")
    pressure_mpa: Annotated[float, Field(ge=0, le=5)] | None = None
    present: bool | None = None  # on its bracket
    obstructed: bool | None = None


class CallPointSample(_Sample):
    """A manual call point speaks through ``event``; its telemetry is heartbeats and battery."""

    metrics = ("battery", "rssi", "tamper", "fault")


class PanelPointSample(_Sample):
    """A fire alarm panel's point as its UITD reports it (GB/T 26875.3 part status): the panel's own verdicts."""

    metrics = ("fire_alarm", "part_fault", "supervisory", "power_fault", "battery", "rssi", "tamper", "fault")
    fire_alarm: bool | None = None  # the panel declared a fire alarm at this point
    part_fault: bool | None = None  # the point is in fault
    supervisory: bool | None = None  # a supervisory signal (监管) from this point
    power_fault: bool | None = None  # the point's power supply failed


SAMPLE_MODELS: dict[DeviceKind, type[_Sample]] = {
    DeviceKind.SMOKE: SmokeSample,
    DeviceKind.HEAT: HeatSample,
    DeviceKind.EXTINGUISHER: ExtinguisherSample,
    DeviceKind.CALL_POINT: CallPointSample,
    DeviceKind.PANEL_POINT: PanelPointSample,
}


_MODELS_BY_NAME: dict[str, type[_Sample]] = {kind.value: model for kind, model in SAMPLE_MODELS.items()}


class EventPayload(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    ts: int | str | None = None
    type: Annotated[EventType, Field(strict=False)]
    detail: Annotated[str, StringConstraints(max_length=256)] | None = None
    seq: int | None = Field(default=None, ge=0)
    device: str | None = None
    kind: Annotated[DeviceKind, Field(strict=False)] | None = None
    drill: bool = False


# --- decoding -------------------------------------------------------------------------------------------------------

_TYPE_ERRORS = ("_type", "_parsing", "is_instance_of", "dict_type", "model_type", "bool_parsing")
_RANGE_ERRORS = (
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "string_too_long",
    "too_long",
)


def _reason_for(exc: ValidationError) -> tuple[Reason, str]:
    """Map pydantic's first error to a contract reason, with the field it concerns."""
    error = exc.errors(include_url=False)[0]
    kind = error["type"]
    field = ".".join(str(p) for p in error["loc"] if not isinstance(p, int)) or "payload"
    # pydantic reports a union's members; the field name is the first element of the location
    field = field.split(".")[0]
    if kind == "extra_forbidden":
        return Reason.UNKNOWN_METRIC, f"unknown field {field!r}"
    if kind == "finite_number":
        return Reason.NON_FINITE, f"{field} is NaN or infinite"
    if kind in _RANGE_ERRORS:
        return Reason.OUT_OF_RANGE, f"{field}: {error['msg']}"
    if kind in ("enum", "literal_error") and field == "type":
        return Reason.UNKNOWN_EVENT, f"event type must be one of {', '.join(e.value for e in EventType)}"
    if kind == "missing":
        return Reason.WRONG_SHAPE, f"{field} is required"
    if kind in ("enum", "literal_error"):
        return Reason.OUT_OF_RANGE, f"{field}: {error['msg']}"
    return Reason.WRONG_TYPE, f"{field}: {error['msg']}"


class _NonFinite(Exception):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonFinite(name)


def _json_error(payload: bytes, exc: orjson.JSONDecodeError) -> Rejected:
    """The rejection for a payload orjson refused: ``non_finite`` for NaN/Infinity, ``not_json`` for the rest."""
    message = str(exc)
    if "infinity" in message:
        return Rejected(Reason.NON_FINITE, "a number is infinite")
    # ("-Infinity" fails as "no digit after sign", NaN/Infinity as "unexpected character")
    if ("unexpected character" in message or "no digit after sign" in message) and (
        b"NaN" in payload or b"Infinity" in payload
    ):
        # orjson refuses the non-standard constants outright; find out whether that is all that is wrong
        try:
            json.loads(payload, parse_constant=_refuse_constant)
        except _NonFinite as nf:
            return Rejected(Reason.NON_FINITE, f"{nf} is not a finite number")
        except (ValueError, RecursionError):
            pass
    return Rejected(Reason.NOT_JSON, message.split(":")[0][:200])


def parse_json(payload: bytes) -> Any:
    """Parse JSON, telling apart NaN/Infinity (``non_finite``) from other malformed input (``not_json``)."""
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise _json_error(payload, exc) from None


def parse_ts(value: int | str | None, *, received_ms: int) -> int:
    if value is None:
        return received_ms
    if isinstance(value, int):
        if value < 0:
            raise Rejected(Reason.BAD_TIMESTAMP, "ts must be non-negative epoch milliseconds")
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise Rejected(Reason.BAD_TIMESTAMP, f"ts {value[:64]!r} is not RFC 3339") from None
    if parsed.tzinfo is None:
        raise Rejected(Reason.BAD_TIMESTAMP, f"ts {value[:64]!r} has no UTC offset")
    return int(parsed.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class DecodePolicy:
    allow_unregistered: bool = True
    max_future_skew_ms: int = 300_000
    max_age_ms: int = 30 * 86_400_000
    # The buildings this gateway owns (mqtt.buildings); None: every building.  Its subscriptions bring it only
    # these, so a foreign one means a stale subscription or a misconfigured broker: judged by its owner, not here.
    buildings: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    """A message that passed the contract: its inputs for the rules engine, and how many timestamps were skewed."""

    topic: Topic
    inputs: tuple[Input, ...]
    clock_skew: int = 0


Registry = Mapping[str, DeviceRef] | Callable[[str], DeviceRef | None]

# Per kind: pydantic-core's validator of the sample model (what ``model_validate`` calls, without its Python wrapper)
# and the metrics a reading carries, in the model's order.
_SAMPLE_VALIDATORS: dict[str, tuple[Any, tuple[str, ...]]] = {
    name: (model.__pydantic_validator__, model.metrics) for name, model in _MODELS_BY_NAME.items()
}
_EVENT_VALIDATOR = EventPayload.__pydantic_validator__
TOPIC_CACHE_SIZE = 65_536  # parsed topics kept per decoder; a district's devices times their channels fit easily


class Decoder:
    """Judges one MQTT message against the contract.  Stateless apart from the registry it is given (and a bounded
    cache of the topics it has parsed, which never changes a verdict)."""

    def __init__(self, *, prefix: str, registry: Registry, policy: DecodePolicy | None = None) -> None:
        self._prefix = prefix
        if isinstance(registry, Mapping):
            self._lookup: Callable[[str], DeviceRef | None] = registry.get
        else:
            self._lookup = registry
        self._policy = policy = policy or DecodePolicy()
        self._future_ms = policy.max_future_skew_ms
        self._max_age_ms = policy.max_age_ms
        # topic -> its parts, for valid topics only (a bad topic is parsed again each time, and rejected again)
        self._topics: dict[str, Topic] = {}

    def decode(self, topic: str, payload: bytes, *, received_ms: int) -> Decoded:
        parsed_topic = self._topics.get(topic)
        if parsed_topic is None:
            parsed_topic = parse_topic(topic, self._prefix)
            owned = self._policy.buildings
            if owned is not None and parsed_topic.building not in owned:
                raise Rejected(
                    Reason.FOREIGN_BUILDING,
                    f"building {parsed_topic.building!r} is not one of this gateway's (mqtt.buildings)",
                    building=parsed_topic.building,
                    device=parsed_topic.device,
                )
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = parsed_topic
        try:
            return self._decode(parsed_topic, payload, received_ms)
        except Rejected as rej:
            rej.building = parsed_topic.building
            rej.device = parsed_topic.device
            raise

    def _decode(self, topic: Topic, payload: bytes, received_ms: int) -> Decoded:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise Rejected(Reason.OVERSIZE, f"{len(payload)} bytes, limit {MAX_PAYLOAD_BYTES}")
        channel = topic.channel
        if channel == "status":
            return self._status(topic, payload, received_ms)
        # orjson checks the whole buffer is UTF-8 before it parses anything, so a parsed document was valid UTF-8
        # (tests/test_contract.py holds orjson to that); only a refused one needs telling apart.
        try:
            document = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise Rejected(Reason.NOT_UTF8, f"invalid UTF-8 at byte {bad.start}") from None
            raise _json_error(payload, exc) from None
        if channel == "event":
            if not isinstance(document, dict):
                raise Rejected(Reason.WRONG_SHAPE, "an event must be a JSON object")
            return self._event(topic, document, received_ms)
        if isinstance(document, dict):
            return self._telemetry(topic, (document,), received_ms)
        if isinstance(document, list):
            if not document:
                raise Rejected(Reason.WRONG_SHAPE, "an empty batch")
            if len(document) > MAX_BATCH:
                raise Rejected(Reason.TOO_MANY, f"{len(document)} samples in one batch, limit {MAX_BATCH}")
            return self._telemetry(topic, document, received_ms)
        raise Rejected(Reason.WRONG_SHAPE, "telemetry must be a JSON object or an array of objects")

    def _ref(self, topic: Topic, payload_kind: DeviceKind | str | None) -> DeviceRef:
        ref = self._lookup(topic.device)
        if ref is not None:
            if ref.building != topic.building:
                raise Rejected(Reason.WRONG_BUILDING, f"device {topic.device!r} belongs to building {ref.building!r}")
            return ref
        if not self._policy.allow_unregistered:
            raise Rejected(Reason.UNKNOWN_DEVICE, f"device {topic.device!r} is not registered")
        if payload_kind is None:
            raise Rejected(Reason.UNKNOWN_DEVICE, f"device {topic.device!r} is not registered and sent no 'kind'")
        return DeviceRef(building=topic.building, device=topic.device, kind=str(payload_kind), registered=False)

    def _check_time(self, ts: int, received_ms: int) -> tuple[int, bool]:
        if ts > received_ms + self._future_ms:
            return received_ms, True
        if ts < received_ms - self._max_age_ms:
            raise Rejected(Reason.STALE, f"ts is {(received_ms - ts) // 86_400_000} days old")
        return ts, False

    @staticmethod
    def _kind_of(sample: dict[str, Any]) -> DeviceKind | None:
        kind = sample.get("kind")
        if kind is None:
            return None
        try:
            return DeviceKind(kind)
        except (ValueError, TypeError):
            raise Rejected(Reason.WRONG_TYPE, f"kind must be one of {', '.join(DeviceKind)}") from None

    def _telemetry(self, topic: Topic, samples: Sequence[Any], received_ms: int) -> Decoded:
        # The checks run in the contract's order (shape, kind, device, then per sample: shape, model, id, kind,
        # time), so that a message breaking several rules is always rejected for the same one.
        first = samples[0]
        if not isinstance(first, dict):
            raise Rejected(Reason.WRONG_SHAPE, "each sample must be a JSON object")
        payload_kind = self._kind_of(first) if "kind" in first else None
        ref = self._lookup(topic.device)
        if ref is None or ref.building != topic.building:
            ref = self._ref(topic, payload_kind)
        entry = _SAMPLE_VALIDATORS.get(ref.kind)
        if entry is None:  # a registry entry of a kind the contract does not know
            raise Rejected(Reason.UNKNOWN_DEVICE, f"unknown kind {ref.kind!r}")
        validate, metrics = entry[0].validate_python, entry[1]
        device = topic.device
        kind = ref.kind
        check_time = self._check_time
        single = len(samples) == 1
        inputs: list[Input] = []
        skewed = 0
        index = 0
        for raw in samples:
            if not isinstance(raw, dict):
                raise Rejected(Reason.WRONG_SHAPE, f"sample {index} is not a JSON object")
            try:
                fields = validate(raw).__dict__
            except ValidationError as exc:
                reason, detail = _reason_for(exc)
                raise Rejected(reason, detail if single else f"sample {index}: {detail}") from None
            named = fields["device"]
            if named is not None and named != device:
                raise Rejected(Reason.SPOOFED_ID, f"payload names device {named[:64]!r}")
            sample_kind = fields["kind"]
            if sample_kind is not None and sample_kind != kind:
                raise Rejected(Reason.WRONG_TYPE, f"kind {sample_kind.value!r} but the registry says {kind!r}")
            ts = fields["ts"]
            if ts is None:
                ts = received_ms
            elif isinstance(ts, int):
                if ts < 0:
                    raise Rejected(Reason.BAD_TIMESTAMP, "ts must be non-negative epoch milliseconds")
            else:
                ts = parse_ts(ts, received_ms=received_ms)
            ts, skew = check_time(ts, received_ms)
            skewed += skew
            values: dict[str, MetricValue] = {}
            for name in metrics:
                value = fields[name]
                if value is not None:
                    values[name] = value
            # positional: Reading(ref, ts_ms, values, seq, drill), a little cheaper than keywords per sample
            inputs.append(Reading(ref, ts, values, fields["seq"], fields["drill"]))
            index += 1
        return Decoded(topic, tuple(inputs), skewed)

    def _event(self, topic: Topic, document: dict[str, Any], received_ms: int) -> Decoded:
        ref = self._ref(topic, self._kind_of(document))
        try:
            event = _EVENT_VALIDATOR.validate_python(document)
        except ValidationError as exc:
            reason, detail = _reason_for(exc)
            raise Rejected(reason, detail) from None
        if event.device is not None and event.device != topic.device:
            raise Rejected(Reason.SPOOFED_ID, f"payload names device {event.device[:64]!r}")
        if event.ts is None and event.type is EventType.ALARM:
            # The rules hold back the device's telemetry stamped up to the alarm's ts (the fast lane's watermark):
            # a time of receipt against a device clock that runs behind would hold back its next readings too.
            raise Rejected(Reason.WRONG_SHAPE, "an alarm event needs the ts of the sample that showed the alarm")
        ts, skew = self._check_time(parse_ts(event.ts, received_ms=received_ms), received_ms)
        decoded = DeviceEvent(ref=ref, ts_ms=ts, type=event.type.value, detail=event.detail, drill=event.drill)
        return Decoded(topic, (decoded,), int(skew))

    def _status(self, topic: Topic, payload: bytes, received_ms: int) -> Decoded:
        text = payload.strip()
        if text not in (b"online", b"offline"):
            raise Rejected(Reason.WRONG_SHAPE, "status must be the plain string 'online' or 'offline'")
        ref = self._lookup(topic.device)
        if ref is None:
            if not self._policy.allow_unregistered:
                raise Rejected(Reason.UNKNOWN_DEVICE, f"device {topic.device!r} is not registered")
            ref = DeviceRef(building=topic.building, device=topic.device, kind="unknown", registered=False)
        elif ref.building != topic.building:
            raise Rejected(Reason.WRONG_BUILDING, f"device {topic.device!r} belongs to building {ref.building!r}")
        return Decoded(topic, (StatusChange(ref=ref, ts_ms=received_ms, online=text == b"online"),))


def registry_from_config(config: FiregridConfig) -> dict[str, DeviceRef]:
    """The device registry as the decoder and the rules engine see it: id -> where the device is."""
    grids = {b.id: b.grid for b in config.buildings}
    return {
        d.id: DeviceRef(building=d.building, device=d.id, kind=d.kind.value, floor=d.floor, grid=grids.get(d.building))
        for d in config.devices
    }


def policy_from_config(config: FiregridConfig) -> DecodePolicy:
    return DecodePolicy(
        allow_unregistered=config.contract.allow_unregistered,
        max_future_skew_ms=config.contract.max_future_skew_s * 1000,
        max_age_ms=config.contract.max_age_s * 1000,
        buildings=frozenset(config.mqtt.buildings) if config.mqtt.buildings else None,
    )
