"""The community a simulation plays out in: buildings, floors and devices, from a firegrid config or generated.

Only the parts of the registry a device needs to speak the contract are kept (id, building, kind, floor and its
heartbeat period), as slotted frozen records, so 100,000 of them fit in a few tens of megabytes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rules.types import DeviceKind

if TYPE_CHECKING:  # a generated community needs no gateway config
    from gateway.config import FiregridConfig

DEFAULT_HEARTBEAT_S = 300

# How often a healthy device reports, per kind, capped by its heartbeat period.  Detectors report often enough
# that a rate-of-rise window sees several samples; extinguishers and call points mostly just say they are alive.
DEFAULT_INTERVAL_S: dict[str, float] = {
    DeviceKind.SMOKE.value: 60.0,
    DeviceKind.HEAT.value: 60.0,
    DeviceKind.EXTINGUISHER.value: 300.0,
    DeviceKind.CALL_POINT.value: 300.0,
    DeviceKind.PANEL_POINT.value: 300.0,  # a panel's point reports its state (normal, as simulated)
}

# While a scenario drives a device it reports this often (real detectors report by exception when in alarm).
ACTIVE_INTERVAL_S = 2.0


class ModelError(ValueError):
    """The community could not be built (unknown building, floor or device in a target, bad generator sizes)."""


@dataclass(frozen=True, slots=True)
class SimDevice:
    id: str
    building: str
    kind: str
    floor: int | None
    heartbeat_s: int = DEFAULT_HEARTBEAT_S


@dataclass(frozen=True, slots=True)
class SimBuilding:
    id: str
    floors: int = 1
    basements: int = 0
    grid: str | None = None


@dataclass(frozen=True)
class Community:
    """Buildings and devices in a stable order (the order is part of determinism)."""

    buildings: tuple[SimBuilding, ...]
    devices: tuple[SimDevice, ...]
    prefix: str = "firegrid"
    _by_id: dict[str, SimDevice] = field(default_factory=dict, compare=False, repr=False)
    _buildings: dict[str, SimBuilding] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update((d.id, d) for d in self.devices)
        self._buildings.update((b.id, b) for b in self.buildings)

    def device(self, device_id: str) -> SimDevice | None:
        return self._by_id.get(device_id)

    def building(self, building_id: str) -> SimBuilding | None:
        return self._buildings.get(building_id)

    def in_building(self, building: str, *, floor: int | None = None, kind: str | None = None) -> list[SimDevice]:
        return [
            d
            for d in self.devices
            if d.building == building and (floor is None or d.floor == floor) and (kind is None or d.kind == kind)
        ]

    def topic(self, device: SimDevice, channel: str) -> str:
        return f"{self.prefix}/{device.building}/{device.id}/{channel}"

    def select(self, ids: Iterable[str]) -> Community:
        """A sub-community with only these devices (verify drives only the devices its scenario needs)."""
        wanted = set(ids)
        devices = tuple(d for d in self.devices if d.id in wanted)
        buildings = tuple(b for b in self.buildings if any(d.building == b.id for d in devices))
        return Community(buildings=buildings, devices=devices, prefix=self.prefix)


def from_config(config: FiregridConfig) -> Community:
    """The community of a firegrid config: its registry's ids, so a deployment recognises every device."""
    heartbeats = {str(k): int(v) for k, v in config.presence.heartbeat_s.items()}
    buildings = tuple(
        SimBuilding(id=b.id, floors=b.floors, basements=b.basements, grid=b.grid) for b in config.buildings
    )
    devices = tuple(
        SimDevice(
            id=d.id,
            building=d.building,
            kind=d.kind.value,
            floor=d.floor,
            heartbeat_s=int(d.heartbeat_s or heartbeats.get(d.kind.value, DEFAULT_HEARTBEAT_S)),
        )
        for d in config.devices
    )
    return Community(buildings=buildings, devices=devices, prefix=config.mqtt.topic_prefix)


# Mix of a generated building: mostly smoke detectors, as in a real residential block.
_MIX = (
    (DeviceKind.SMOKE.value, 0.55),
    (DeviceKind.HEAT.value, 0.15),
    (DeviceKind.EXTINGUISHER.value, 0.22),
    (DeviceKind.CALL_POINT.value, 0.08),
)
_SHORT = {"smoke": "sd", "heat": "ht", "extinguisher": "ex", "call_point": "cp"}


def generate(*, buildings: int, devices_per_building: int, seed: int = 0, prefix: str = "firegrid") -> Community:
    """A synthetic community: ``b0001``..``bNNNN`` with devices ``b0001-sd-0003-01`` spread over floors.

    Every building gets at least one device of each kind when it has room (so every scenario has a target), and
    each floor with a smoke detector gets two of them where possible (so a fire can be confirmed).
    """
    if buildings < 1 or devices_per_building < 1:
        raise ModelError("--buildings and --devices-per-building must be at least 1")
    if buildings * devices_per_building > 2_000_000:
        raise ModelError("at most 2,000,000 devices")
    rng = random.Random(f"community:{seed}")
    width = max(4, len(str(buildings)))
    out_buildings: list[SimBuilding] = []
    out_devices: list[SimDevice] = []
    for b in range(1, buildings + 1):
        bid = f"b{b:0{width}d}"
        floors = max(1, min(30, devices_per_building // 6 or 1, rng.randint(2, 30)))
        out_buildings.append(SimBuilding(id=bid, floors=floors, grid=f"g{(b - 1) // 50 + 1:02d}"))
        counts = {kind: int(devices_per_building * share) for kind, share in _MIX}
        counts[DeviceKind.SMOKE.value] += devices_per_building - sum(counts.values())
        kinds: list[str] = []
        for kind, _ in _MIX:
            kinds.extend([kind] * counts[kind])
        # Guarantee variety in small buildings: one of each kind first.
        if devices_per_building >= 4:
            for kind, _ in _MIX:
                if counts[kind] == 0:
                    kinds.remove(DeviceKind.SMOKE.value)
                    kinds.append(kind)
        per_kind: dict[str, int] = {}
        for i, kind in enumerate(kinds):
            n = per_kind[kind] = per_kind.get(kind, 0) + 1
            if kind == DeviceKind.SMOKE.value:
                floor = (n - 1) // 2 % floors + 1  # two detectors per floor
            else:
                floor = (n - 1) % floors + 1
            out_devices.append(SimDevice(id=f"{bid}-{_SHORT[kind]}-{i + 1:04d}", building=bid, kind=kind, floor=floor))
    return Community(buildings=tuple(out_buildings), devices=tuple(out_devices), prefix=prefix)


def parse_floor(text: str) -> int:
    """``3F``, ``3`` -> 3; ``B1`` -> -1 (basements)."""
    value = text.strip().upper()
    try:
        if value.startswith("B"):
            return -int(value[1:])
        return int(value.removesuffix("F"))
    except ValueError:
        raise ModelError(f"bad floor {text!r}: expected e.g. 3F, 3 or B1") from None


def format_floor(floor: int | None) -> str:
    if floor is None:
        return "-"
    return f"B{-floor}" if floor < 0 else f"{floor}F"
