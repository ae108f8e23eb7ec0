"""Simulated traffic through the gateway's other doors (``firegrid simulate --via uitd|onenet|ctwing|http``).

The simulation makes MQTT-contract messages (topic + JSON payload); each publisher here says the same thing the way
that path's real sender would: a UITD's GB/T 26875.3 part status frame over TCP (panel_point devices mapped in
``uitd.panels``), a signed OneNET push, a CTWing subscription push, a plain HTTP push with an ``ingest`` token.  Each
send waits for the gateway's answer (the confirm frame, the HTTP 200), which comes after its group commit, so
``acked`` counts messages the gateway made durable.  What a path cannot say (a call point's ``pressed`` event over
OneNET, a smoke detector over a UITD) is counted as ``skipped``, never sent wrongly.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway.config import FiregridConfig
from gateway.ingest.uitd import (
    ApplicationUnit,
    Command,
    Frame,
    FrameReader,
    PartStatus,
    UitdTime,
    UnitType,
    build_frame,
    encode_description,
    encode_frame,
)
from simulators.publish import Stats
from simulators.sim import Message

VIAS = ("mqtt", "uitd", "onenet", "ctwing", "http")
_CST = timezone(timedelta(hours=8))
_CENTRE = 1  # the monitoring centre's address in frames we send (the gateway answers to whatever we name)


class ViaError(RuntimeError):
    """The path cannot be used as configured (no mapping, no listener, no token)."""


def _split(topic: str) -> tuple[str, str, str] | None:
    parts = topic.split("/")
    return (parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def _samples(payload: bytes) -> list[dict[str, Any]] | None:
    try:
        document = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    items = document if isinstance(document, list) else [document]
    return [item for item in items if isinstance(item, dict)] or None


_NOT_METRICS = ("ts", "seq", "device", "kind", "drill")


class ViaPublisher(ABC):
    """Sends one message at a time and waits for the gateway's answer."""

    def __init__(self) -> None:
        self.stats = Stats()
        self.skipped = 0

    def start(self, *, timeout: float = 10.0) -> None:  # noqa: B027 - most paths have nothing to open
        pass

    def stop(self) -> None:  # noqa: B027
        pass

    def drop(self, device: str) -> None:  # noqa: B027 - a platform device has no connection of its own to lose
        pass

    def restore(self, device: str) -> None:  # noqa: B027
        pass

    def flush(self, *, timeout: float = 10.0) -> bool:
        return True  # every send already waited for its answer

    def publish(self, message: Message) -> bool:
        sent = self._send(message)
        if sent is None:
            self.skipped += 1
            return True
        self.stats.sent += 1
        if sent:
            self.stats.acked += 1
        else:
            self.stats.errors += 1
        return sent

    @abstractmethod
    def _send(self, message: Message) -> bool | None:
        """True: answered as committed; False: failed; None: this path cannot say this message."""


class _HttpPoster(ViaPublisher):
    def __init__(self, api: str) -> None:
        super().__init__()
        self.api = api.rstrip("/")

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"{self.api}{path}", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (urllib.error.URLError, OSError):
            return 0


class HttpPublisher(_HttpPoster):
    """``POST /api/v1/ingest/{building}/{device}/{channel}`` with the MQTT payload and an ``ingest`` token."""

    def __init__(self, api: str, *, token: str) -> None:
        super().__init__(api)
        self.token = token

    def _send(self, message: Message) -> bool | None:
        parts = _split(message.topic)
        if parts is None:
            return None
        building, device, channel = parts
        status = self.post(
            f"/api/v1/ingest/{building}/{device}/{channel}",
            message.payload,
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        # 422: the gateway judged a malformed message (the simulation sends some on purpose) and committed that
        return status in (200, 422)


class OneNetPublisher(_HttpPoster):
    """OneNET's data push: type 1 data points (one per metric, ds_id from ``ingest.onenet.datastreams``) and type 2
    online/offline, signed Base64(MD5(token + nonce + msg))."""

    def __init__(self, api: str, *, config: FiregridConfig) -> None:
        super().__init__(api)
        onenet = config.ingest.onenet
        if onenet is None:
            raise ViaError("--via onenet needs ingest.onenet in the config")
        self.token = onenet.token.get_secret_value()
        self.ids = {m.device: m.id for m in onenet.devices}
        self.streams: dict[str, str] = {}
        for ds_id, metric in onenet.datastreams.items():
            self.streams.setdefault(metric, ds_id)
        self._nonce = 0

    def _send(self, message: Message) -> bool | None:
        parts = _split(message.topic)
        if parts is None or parts[1] not in self.ids:
            return None
        _building, device, channel = parts
        dev_id = self.ids[device]
        now = int(time.time() * 1000)
        items: list[dict[str, Any]] = []
        if channel == "status":
            items.append({"type": 2, "dev_id": dev_id, "status": int(message.payload == b"online"), "at": now})
        elif channel == "telemetry":
            for sample in _samples(message.payload) or []:
                at = sample["ts"] if isinstance(sample.get("ts"), int) else now
                for name, value in sample.items():
                    ds_id = self.streams.get(name)
                    if name in _NOT_METRICS or ds_id is None:
                        continue
                    item: dict[str, Any] = {"type": 1, "dev_id": dev_id, "ds_id": ds_id, "at": at, "value": value}
                    if sample.get("drill") is True:
                        item["drill"] = True
                    items.append(item)
        if not items:
            return None
        msg = json.dumps(items, separators=(",", ":"), ensure_ascii=False)
        self._nonce += 1
        nonce = f"sim{self._nonce:08d}"
        signature = base64.b64encode(hashlib.md5((self.token + nonce + msg).encode()).digest()).decode()
        body = f'{{"msg":{msg},"msg_signature":{json.dumps(signature)},"nonce":"{nonce}"}}'.encode()
        return self.post("/api/v1/ingest/onenet", body, {"Content-Type": "application/json"}) == 200


class CtwingPublisher(_HttpPoster):
    """CTWing (AEP) subscription pushes: ``dataReport`` with ``payload.serviceData``, ``deviceOnlineOfflineReport``."""

    def __init__(self, api: str, *, config: FiregridConfig) -> None:
        super().__init__(api)
        ctwing = config.ingest.ctwing
        if ctwing is None:
            raise ViaError("--via ctwing needs ingest.ctwing in the config")
        self.token = ctwing.token.get_secret_value()
        self.ids = {m.device: m.id for m in ctwing.devices}
        self.fields: dict[str, str] = {}
        for field, metric in ctwing.fields.items():
            self.fields.setdefault(metric, field)

    def _send(self, message: Message) -> bool | None:
        parts = _split(message.topic)
        if parts is None or parts[1] not in self.ids:
            return None
        _building, device, channel = parts
        base: dict[str, Any] = {"deviceId": self.ids[device], "timestamp": int(time.time() * 1000)}
        pushes: list[dict[str, Any]] = []
        if channel == "status":
            pushes.append(
                {**base, "messageType": "deviceOnlineOfflineReport", "eventType": int(message.payload == b"online")}
            )
        elif channel == "telemetry":
            for sample in _samples(message.payload) or []:
                data = {self.fields[k]: v for k, v in sample.items() if k not in _NOT_METRICS and k in self.fields}
                if not data:
                    continue
                push = {**base, "messageType": "dataReport", "payload": {"serviceData": data}}
                if isinstance(sample.get("ts"), int):
                    push["timestamp"] = sample["ts"]
                if sample.get("drill") is True:
                    push["drill"] = True
                pushes.append(push)
        if not pushes:
            return None
        headers = {"Content-Type": "application/json", "X-Firegrid-Token": self.token}
        return all(self.post("/api/v1/ingest/ctwing", json.dumps(p).encode(), headers) == 200 for p in pushes)


class UitdPublisher(ViaPublisher):
    """A UITD in front of each configured panel: ``panel_point`` telemetry becomes part status frames; each frame
    waits for its confirm."""

    def __init__(self, address: str, *, config: FiregridConfig, timeout_s: float = 30.0) -> None:
        super().__init__()
        host, _, port = address.rpartition(":")
        self.host = host.strip("[]") or "127.0.0.1"
        self.port = int(port)
        self.timeout_s = timeout_s
        # device -> (UITD address, system type, system address, part type, part address)
        self.parts: dict[str, tuple[int, int, int, int, int]] = {}
        for panel in config.uitd.panels:
            for point in panel.points:
                part_type = point.part_type if point.part_type is not None else 0
                self.parts[point.device] = (
                    panel.address,
                    point.system_type,
                    point.system_address,
                    part_type,
                    point.part_address,
                )
        if not self.parts:
            raise ViaError("--via uitd needs uitd.panels with points in the config")
        self._sock: socket.socket | None = None
        self._reader = FrameReader()
        self._serial = 0

    def start(self, *, timeout: float = 10.0) -> None:
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ViaError(f"cannot connect to the UITD listener {self.host}:{self.port}: {exc}") from None

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message: Message) -> bool | None:
        parts = _split(message.topic)
        if parts is None or parts[1] not in self.parts or parts[2] != "telemetry":
            return None
        samples = _samples(message.payload)
        if not samples:
            return None
        address, st, sa, pt, pa = self.parts[parts[1]]
        sample = samples[-1]
        status = (
            (1 if not any(sample.get(k) for k in ("fire_alarm", "part_fault", "supervisory", "power_fault")) else 0)
            | (2 if sample.get("fire_alarm") else 0)
            | (4 if sample.get("part_fault") else 0)
            | (16 if sample.get("supervisory") else 0)
            | (256 if sample.get("power_fault") else 0)
        )
        stamp = UitdTime.from_datetime(datetime.now(_CST))
        part = PartStatus(
            system_type=st,
            system_address=sa,
            part_type=pt,
            part_address=pa,
            status=status,
            raw_description=encode_description(parts[1][:15]),
            time=stamp,
        )
        self._serial = (self._serial % 0xFFFF) + 1
        frame = build_frame(
            serial=self._serial,
            time=stamp,
            source=address,
            destination=_CENTRE,
            command=Command.SEND_DATA,
            unit=ApplicationUnit(type_flag=UnitType.PART_STATUS, objects=(part,)),
        )
        return self._exchange(encode_frame(frame), self._serial)

    def _exchange(self, raw: bytes, serial: int) -> bool:
        for _attempt in range(3):  # as a UITD does: send again when no confirm comes
            if self._sock is None:
                try:
                    self.start()
                except ViaError:
                    self.stats.disconnects += 1
                    time.sleep(1)
                    continue
            assert self._sock is not None
            try:
                self._sock.sendall(raw)
                if self._confirmed(serial):
                    return True
            except OSError:
                self.stats.disconnects += 1
                self.stop()
        return False

    def _confirmed(self, serial: int) -> bool:
        assert self._sock is not None
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            self._sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                return False
            if not chunk:
                raise OSError("the gateway closed the connection")
            for item in self._reader.feed(chunk):
                if isinstance(item, Frame) and item.serial == serial and item.command == Command.CONFIRM:
                    return True
        return False


def via_publisher(
    via: str, *, config: FiregridConfig | None, api: str | None, token: str | None, uitd: str | None
) -> ViaPublisher:
    """The publisher of path ``via`` (not ``mqtt``, which the caller builds)."""
    if config is None:
        raise ViaError(f"--via {via} needs --config (its mapping and secrets)")
    if via == "uitd":
        listen = uitd or config.uitd.listen
        if listen is None:
            raise ViaError("--via uitd needs --uitd HOST:PORT or uitd.listen in the config")
        if listen.startswith("0.0.0.0:"):
            listen = "127.0.0.1:" + listen.rpartition(":")[2]
        return UitdPublisher(listen, config=config)
    base = api or f"http://{config.http.host if config.http.host != '0.0.0.0' else '127.0.0.1'}:{config.http.port}"
    if via == "http":
        if not token:
            raise ViaError("--via http needs --token (an ingest token)")
        return HttpPublisher(base, token=token)
    if via == "onenet":
        return OneNetPublisher(base, config=config)
    if via == "ctwing":
        return CtwingPublisher(base, config=config)
    raise ViaError(f"unknown path {via!r}; one of {', '.join(VIAS)}")
