"""IoT platforms' HTTP pushes (China Mobile OneNET, China Telecom CTWing/AEP) -> the MQTT contract's messages.

Pure: a parsed push and the config in, messages (device, channel, payload) and rejections out.  Each message is then
judged by the same decoder, dedup, presence and rules as an MQTT one (``gateway/api/ingest.py`` hands it off and
answers after the group commit).  The formats are restated in docs/telemetry.md ("Other sources").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from gateway.config import FiregridConfig, PlatformDevice
from gateway.ingest.contract import Reason, Rejected

BOOL_METRICS = frozenset(
    {"alarm", "present", "obstructed", "tamper", "fire_alarm", "part_fault", "supervisory", "power_fault"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformMessage:
    building: str
    device: str
    channel: Literal["telemetry", "status"]
    payload: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Translated:
    messages: tuple[PlatformMessage, ...]
    rejected: tuple[Rejected, ...]


def onenet_signature(*, token: str, nonce: str, msg: str) -> str:
    """OneNET's signature of a push or of its URL verification: Base64(MD5(token + nonce + msg))."""
    return base64.b64encode(hashlib.md5((token + nonce + msg).encode()).digest()).decode()


def signature_matches(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.encode())


def raw_member(body: bytes, name: str) -> str | None:
    """The JSON text of the top-level member ``name`` exactly as it appears in ``body`` (what OneNET signs), or None.

    Decoded and re-encoded text would differ in spacing and escapes; the signature is over the text sent."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()
    pos = _skip(text, 0, " \t\r\n")
    if not text.startswith("{", pos):
        return None
    pos += 1
    try:
        while True:
            pos = _skip(text, pos, " \t\r\n,")
            if text[pos] == "}":
                return None
            key, pos = decoder.raw_decode(text, pos)
            pos = _skip(text, pos, " \t\r\n:")
            start = pos
            _value, pos = decoder.raw_decode(text, pos)
            if key == name:
                return text[start:pos]
    except (ValueError, IndexError, RecursionError):
        return None


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


class PlatformMap:
    """Platform device ids / IMEIs -> registered firegrid devices, and platform field names -> metrics."""

    def __init__(self, *, config: FiregridConfig, devices: Iterable[PlatformDevice], fields: Mapping[str, str]) -> None:
        self._buildings = {d.id: d.building for d in config.devices}
        self._devices = {m.id: m.device for m in devices}
        self._fields = dict(fields)

    def device(self, *ids: object) -> tuple[str, str] | None:
        for value in ids:
            if value is None:
                continue
            device = self._devices.get(str(value))
            if device is not None and device in self._buildings:
                return self._buildings[device], device
        return None

    def sample(self, values: Mapping[str, Any], *, ts: object, drill: object = False) -> dict[str, Any]:
        """The contract's telemetry sample of the mapped fields of ``values`` (others are ignored).  ``drill``: the
        push carried ``"drill": true`` (firegrid's simulator; inside the signed part of a OneNET push)."""
        sample: dict[str, Any] = {}
        if isinstance(ts, int) and not isinstance(ts, bool) and ts > 0:
            sample["ts"] = ts
        for name, value in values.items():
            metric = self._fields.get(name)
            if metric is None:
                continue
            sample[metric] = _convert(metric, value)
        if drill is True or values.get("drill") is True:
            sample["drill"] = True
        return sample


def _convert(metric: str, value: Any) -> Any:
    """Platform values are often strings or 0/1: turn them into the contract's types where that is unambiguous;
    anything else is passed on and judged (``wrong_type``) by the decoder."""
    if metric in BOOL_METRICS:
        if value in (1, "1", "true", "TRUE", True):
            return True
        if value in (0, "0", "false", "FALSE", False):
            return False
        return value
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _unmapped(platform: str, item: Mapping[str, Any], *ids: str) -> Rejected:
    named = ", ".join(f"{k}={item.get(k)!r}"[:80] for k in ids if item.get(k) is not None) or "no device id"
    return Rejected(Reason.UNMAPPED_DEVICE, f"{platform}: {named} is not in ingest.{platform}.devices")


def onenet_messages(msg: Any, *, mapping: PlatformMap) -> Translated:
    """OneNET's ``msg``: one object or a list of them.  type 1: a data point (dev_id, ds_id, at, value, imei for
    NB-IoT devices); type 2: the device went online (status 1) or offline (status 0)."""
    items = msg if isinstance(msg, list) else [msg]
    messages: list[PlatformMessage] = []
    rejected: list[Rejected] = []
    for item in items:
        if not isinstance(item, dict):
            rejected.append(Rejected(Reason.WRONG_SHAPE, "onenet: each msg must be a JSON object"))
            continue
        found = mapping.device(item.get("dev_id"), item.get("imei"))
        if found is None:
            rejected.append(_unmapped("onenet", item, "dev_id", "imei"))
            continue
        building, device = found
        kind = item.get("type")
        if kind == 2:
            online = item.get("status") == 1
            messages.append(_message(building, device, "status", b"online" if online else b"offline"))
        elif kind == 1:
            ds_id = item.get("ds_id")
            if not isinstance(ds_id, str):
                rejected.append(Rejected(Reason.WRONG_SHAPE, "onenet: a data point needs ds_id", device=device))
                continue
            sample = mapping.sample({ds_id: item.get("value")}, ts=item.get("at"), drill=item.get("drill"))
            if any(k not in ("ts", "drill") for k in sample):
                messages.append(_message(building, device, "telemetry", orjson.dumps(sample)))
        else:
            rejected.append(Rejected(Reason.WRONG_SHAPE, f"onenet: msg type {kind!r} is not 1 or 2", device=device))
    return Translated(messages=tuple(messages), rejected=tuple(rejected))


def ctwing_messages(push: Any, *, mapping: PlatformMap) -> Translated:
    """A CTWing (AEP) subscription push: ``messageType`` ``dataReport`` (payload.serviceData), ``eventReport``
    (eventContent, else payload), ``deviceOnlineOfflineReport`` (eventType 1 online, 0 offline); other types
    (``commandResponse``, ...) carry nothing to judge; ``deviceId`` or ``IMEI`` names the
    device, ``timestamp`` is epoch milliseconds."""
    if not isinstance(push, dict):
        return Translated(messages=(), rejected=(Rejected(Reason.WRONG_SHAPE, "ctwing: a push is a JSON object"),))
    found = mapping.device(push.get("deviceId"), push.get("IMEI"), push.get("imei"))
    if found is None:
        return Translated(messages=(), rejected=(_unmapped("ctwing", push, "deviceId", "IMEI"),))
    building, device = found
    kind = push.get("messageType")
    if kind == "deviceOnlineOfflineReport":
        online = push.get("eventType") == 1
        return Translated(
            messages=(_message(building, device, "status", b"online" if online else b"offline"),), rejected=()
        )
    payload = push.get("payload")
    values: Any = None
    if kind == "dataReport":
        values = payload.get("serviceData", payload) if isinstance(payload, dict) else None
    elif kind == "eventReport":
        # the event's data is in eventContent (AEP's subscription push); some devices' profiles put it in payload
        content = push.get("eventContent")
        values = content if isinstance(content, dict) else payload
    else:
        return Translated(messages=(), rejected=())  # command responses and the like: nothing to judge
    if not isinstance(values, dict):
        detail = f"ctwing: messageType {str(kind)[:40]!r} with no payload object"
        return Translated(messages=(), rejected=(Rejected(Reason.WRONG_SHAPE, detail, device=device),))
    sample = mapping.sample(values, ts=push.get("timestamp"), drill=push.get("drill"))
    if not any(k not in ("ts", "drill") for k in sample):
        return Translated(messages=(), rejected=())
    return Translated(messages=(_message(building, device, "telemetry", orjson.dumps(sample)),), rejected=())


def _message(building: str, device: str, channel: Literal["telemetry", "status"], payload: bytes) -> PlatformMessage:
    return PlatformMessage(building=building, device=device, channel=channel, payload=payload)
