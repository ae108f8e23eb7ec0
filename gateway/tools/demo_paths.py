"""The demo's other doors: a UITD (GB/T 26875.3) in front of a simulated fire alarm panel, and OneNET, CTWing and
plain HTTP pushes, all into the same gateway as the MQTT community (docs/telemetry.md, "Other sources").

The demo config gains, in its first building, two ``panel_point`` devices behind one UITD listening on a free port;
three smoke detectors of the second building are also reported through OneNET, CTWing and plain HTTP (with random
tokens made for the run).  A feeder thread sends through each path every ``every_s`` seconds and, half-way between
the community's fire drills, a panel fire alarm for a while.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from gateway.config import (
    ApiToken,
    CtwingConfig,
    Device,
    FiregridConfig,
    IngestConfig,
    OneNetConfig,
    PlatformDevice,
    UitdConfig,
    UitdPanel,
    UitdPoint,
)
from rules.types import DeviceKind

UITD_ADDRESS = 0x0000_0003_7900


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoPaths:
    """What the feeder needs to know about the paths the config was given."""

    uitd_listen: str
    panel_building: str
    panel_points: tuple[str, ...]
    onenet_device: str | None
    ctwing_device: str | None
    http_device: str | None
    ingest_token: str


def with_other_paths(config: FiregridConfig, *, uitd_port: int) -> tuple[FiregridConfig, DemoPaths]:
    """``config`` plus a UITD panel, OneNET/CTWing mappings and an ingest token (nothing of the config is removed)."""
    building = config.buildings[0]
    points = tuple(f"{building.id}-pp-{n:02d}"[:64] for n in (1, 2))
    taken = {d.id for d in config.devices}
    new_devices = [
        Device(
            id=p,
            building=building.id,
            kind=DeviceKind.PANEL_POINT,
            floor=min(n, building.floors),
            location=f"{n}层消防控制点",
        )
        for n, p in enumerate(points, start=1)
        if p not in taken
    ]
    second = config.buildings[1].id if len(config.buildings) > 1 else building.id
    smoke: list[str | None] = []
    smoke += [d.id for d in config.devices if d.building == second and d.kind == "smoke"][:3]
    smoke += [None] * (3 - len(smoke))
    onenet_device, ctwing_device, http_device = smoke
    uitd = UitdConfig(
        listen=f"127.0.0.1:{uitd_port}",
        panels=[
            UitdPanel(
                address=UITD_ADDRESS,
                building=building.id,
                points=[
                    UitdPoint(system_type=1, system_address=1, part_address=n, device=p)
                    for n, p in enumerate(points, start=1)
                ],
            )
        ],
    )
    ingest = IngestConfig(
        onenet=OneNetConfig(
            token=SecretStr(secrets.token_urlsafe(12)),
            devices=[PlatformDevice(id="586024918", device=onenet_device)] if onenet_device else [],
        ),
        ctwing=CtwingConfig(
            token=SecretStr(secrets.token_urlsafe(12)),
            devices=[PlatformDevice(id="b6c3a1d2e0f94c1a", device=ctwing_device)] if ctwing_device else [],
        ),
    )
    token = secrets.token_urlsafe(16)
    tokens = [*config.http.tokens, ApiToken(name="demo-ingest", token=SecretStr(token), role="ingest")]
    updated = config.model_copy(
        update={
            "devices": [*config.devices, *new_devices],
            "uitd": uitd,
            "ingest": ingest,
            "http": config.http.model_copy(update={"tokens": tokens}),
        }
    )
    for cache in ("_bcache", "_dcache", "_owned"):  # the registry caches of the copied model
        updated.__dict__.pop(cache, None)
    paths = DemoPaths(
        uitd_listen=uitd.listen or "",
        panel_building=building.id,
        panel_points=points,
        onenet_device=onenet_device,
        ctwing_device=ctwing_device,
        http_device=http_device,
        ingest_token=token,
    )
    return updated, paths


class PathsFeeder:
    """A thread sending through every other path now and then, with a panel fire alarm half-way between drills."""

    def __init__(
        self,
        config: FiregridConfig,
        paths: DemoPaths,
        *,
        api: str,
        every_s: float,
        first_alarm_s: float,
        alarm_every_s: float,
        alarm_length_s: float,
        out: Callable[[str], None],
    ) -> None:
        from simulators.via import CtwingPublisher, HttpPublisher, OneNetPublisher, UitdPublisher, ViaPublisher

        self.paths = paths
        self.prefix = config.mqtt.topic_prefix
        self.buildings = {d.id: d.building for d in config.devices}
        self.publishers: dict[str, ViaPublisher] = {
            "uitd": UitdPublisher(paths.uitd_listen, config=config, timeout_s=10),
            "onenet": OneNetPublisher(api, config=config),
            "ctwing": CtwingPublisher(api, config=config),
            "http": HttpPublisher(api, token=paths.ingest_token),
        }
        self.every_s = every_s
        self.first_alarm_s = first_alarm_s
        self.alarm_every_s = alarm_every_s
        self.alarm_length_s = alarm_length_s
        self._out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-paths", daemon=True)
        self.sent: dict[str, int] = dict.fromkeys(self.publishers, 0)
        self.alarms = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        for publisher in self.publishers.values():
            publisher.stop()

    def _send(self, via: str, device: str | None, sample: dict[str, object]) -> None:
        from simulators.sim import Message

        if device is None:
            return
        topic = f"{self.prefix}/{self.buildings[device]}/{device}/telemetry"
        message = Message(t_ms=int(time.time() * 1000), topic=topic, payload=json.dumps(sample).encode())
        if self.publishers[via].publish(message):
            self.sent[via] += 1

    def _run(self) -> None:
        started = time.monotonic()
        next_alarm = started + self.first_alarm_s
        alarm_until: float | None = None
        first = True
        while not self._stop.is_set():
            now = time.monotonic()
            fire = alarm_until is not None and now < alarm_until
            if alarm_until is None and now >= next_alarm:
                self.alarms += 1
                alarm_until = now + self.alarm_length_s
                next_alarm = now + self.alarm_every_s
                fire = True
                self._out(
                    f"panel alarm #{self.alarms}: UITD fire alarm at {self.paths.panel_building} "
                    f"({self.paths.panel_points[0]}) for {self.alarm_length_s:g} s"
                )
            elif alarm_until is not None and now >= alarm_until:
                alarm_until = None
            states = {"fire_alarm": False, "part_fault": False, "supervisory": False, "power_fault": False}
            for n, point in enumerate(self.paths.panel_points):
                self._send("uitd", point, {**states, "fire_alarm": fire and n == 0})
            self._send("onenet", self.paths.onenet_device, {"battery": 86})
            self._send("ctwing", self.paths.ctwing_device, {"alarm": False, "battery": 77})
            self._send("http", self.paths.http_device, {"obscuration": 0.1, "alarm": False})
            if first:
                first = False
                self._out("other paths: " + ", ".join(f"{via} {n} committed" for via, n in self.sent.items()))
            self._stop.wait(min(self.every_s, max(0.05, (alarm_until or next_alarm) - time.monotonic())))
