"""What a UITD's frame means to firegrid: part status objects -> the MQTT contract's telemetry of ``panel_point``
devices, through the ``uitd.panels`` mapping.  Pure: frames and the config in, messages or rejections out.

Each mapped part status becomes one telemetry sample on the synthetic topic ``{prefix}/{building}/{device}/telemetry``
so that it is judged by the same decoder, dedup, presence and rules as an MQTT message: the panel's fire alarm bit
becomes ``fire_alarm`` (rule ``panel-fire-alarm``, fire), fault ``part_fault``, supervisory ``supervisory``, power
fault ``power_fault``.  ``seq`` is the frame's serial number, so a frame the panel sends again because our confirm
did not reach it is a ``duplicate`` while its first copy is remembered.
"""

from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import orjson

from gateway.config import UitdConfig, UitdPanel
from gateway.ingest.contract import Reason, Rejected
from gateway.ingest.uitd import ApplicationUnit, Frame, InvalidTimeError, PartStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class PointMessage:
    """One part status, as the contract's telemetry message of the device it maps to."""

    topic: str
    payload: bytes
    building: str
    device: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameMeaning:
    """What one frame carried: messages for the pipeline, and the parts that could not be mapped."""

    messages: tuple[PointMessage, ...]
    rejected: tuple[Rejected, ...]


class PanelMap:
    """Looks up a UITD by its source address and a part by (system type, system address, part type, part address)."""

    def __init__(self, *, config: UitdConfig, prefix: str) -> None:
        self._prefix = prefix
        self._tz = ZoneInfo(config.timezone)
        self._panels: dict[int, UitdPanel] = {p.address: p for p in config.panels}
        # (panel, system type, system address, part type or None, part address) -> device id
        self._points: dict[tuple[int, int, int, int | None, int], str] = {}
        for panel in config.panels:
            for point in panel.points:
                key = (panel.address, point.system_type, point.system_address, point.part_type, point.part_address)
                self._points[key] = point.device

    def panel(self, address: int) -> UitdPanel | None:
        return self._panels.get(address)

    def device_of(self, panel: UitdPanel, part: PartStatus) -> tuple[str, bool] | None:
        """The device id of ``part`` and whether it is registered; None when it is not mapped."""
        base = (panel.address, part.system_type, part.system_address)
        device = self._points.get((*base, part.part_type, part.part_address)) or self._points.get(
            (*base, None, part.part_address)
        )
        if device is not None:
            return device, True
        if panel.register_parts:
            return self.unregistered(panel, part), False
        return None

    @staticmethod
    def unregistered(panel: UitdPanel, part: PartStatus) -> str:
        return f"{panel.prefix}-{part.system_type}-{part.system_address}-{part.part_address}"[:64]

    def meaning(self, frame: Frame, panel: UitdPanel) -> FrameMeaning:
        unit = frame.unit
        if not isinstance(unit, ApplicationUnit):
            return FrameMeaning(messages=(), rejected=())
        messages: list[PointMessage] = []
        rejected: list[Rejected] = []
        for obj in unit.objects:
            if not isinstance(obj, PartStatus):
                continue  # system state, analog values, operating records: logged by the listener, not readings
            found = self.device_of(panel, obj)
            if found is None:
                where = (
                    f"UITD {panel.address}: system {obj.system_type}/{obj.system_address} part type "
                    f"{obj.part_type} address {obj.part_address} ({obj.description[:40]}) is not in its points"
                )
                if not obj.fire_alarm:
                    rejected.append(Rejected(Reason.UNMAPPED_POINT, where, building=panel.building))
                    continue
                # A fire is never dropped for a gap in the mapping: it is raised for the panel's building as the
                # unregistered point a register_parts panel would report, and the gap is counted.
                found = self.unregistered(panel, obj), False
                detail = f"{where}; its fire alarm is raised as {found[0]}"
                rejected.append(Rejected(Reason.UNMAPPED_POINT, detail, building=panel.building))
            device, registered = found
            sample: dict[str, object] = {
                "seq": frame.serial,
                "fire_alarm": obj.fire_alarm,
                "part_fault": obj.fault,
                "supervisory": obj.supervisory,
                "power_fault": obj.power_fault,
            }
            try:
                sample["ts"] = int(obj.time.to_datetime(tz=self._tz).timestamp() * 1000)
            except InvalidTimeError:
                pass  # a panel clock that is not a calendar time: the time of receipt, as for a device with no ts
            if not registered:
                sample["kind"] = "panel_point"
            if panel.drill:
                sample["drill"] = True
            messages.append(
                PointMessage(
                    topic=f"{self._prefix}/{panel.building}/{device}/telemetry",
                    payload=orjson.dumps(sample),
                    building=panel.building,
                    device=device,
                )
            )
        return FrameMeaning(messages=tuple(messages), rejected=tuple(rejected))
