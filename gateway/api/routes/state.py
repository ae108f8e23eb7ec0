"""What every route shares: the application's :class:`ApiState`, its dependencies (each a 503 when missing) and the
token-scope check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from types import MappingProxyType
from typing import TypeVar

from aiohttp import web

from alerts.store import AlertStore
from gateway.api import models as m
from gateway.api import views as v
from gateway.api.auth import Principal
from gateway.api.framework import ApiError, Call
from gateway.api.hub import Hub
from gateway.api.runtime import Runtime
from gateway.config import FiregridConfig
from gateway.storage.presence import DeviceState, Presence
from rules.loader import RulesError, load_rule_set
from rules.model import RuleConfig

_T = TypeVar("_T")
_NO_RECORDS: Mapping[str, DeviceState] = MappingProxyType({})


class DeviceIndex:
    """Building -> the ids of its devices: the registry's (config) and those presence learnt while running (a device
    missing from the registry, with ``contract.allow_unregistered``).  Built once, then extended as presence learns
    devices, so a request about one building reads only that building's devices, and one about every building
    reads each device once (a district may have 2,000 buildings and 100,000 devices)."""

    def __init__(self, config: FiregridConfig, presence: Presence | None) -> None:
        self.config = config
        self.presence = presence
        self._building_of: dict[str, str] = {}
        self._by_building: dict[str, list[str]] = {}
        for device in config.devices:
            self._add(device.id, device.building)
        self._looked_at = 0  # how many of presence's devices were indexed

    def records(self) -> Mapping[str, DeviceState]:
        """Presence's own records by device id (none without presence: every device is then its registry entry)."""
        return self.presence.devices if self.presence is not None else _NO_RECORDS

    def _add(self, device_id: str, building: str) -> None:
        if device_id not in self._building_of:
            self._building_of[device_id] = building
            self._by_building.setdefault(building, []).append(device_id)

    def refresh(self) -> None:
        if self.presence is None:
            return
        devices = self.presence.devices
        count = len(devices)
        if count == self._looked_at:
            return
        # Presence never forgets a device while it runs, and a dict keeps insertion order: the new ones are last.
        fresh = list(islice(reversed(devices), count - self._looked_at)) if count > self._looked_at else list(devices)
        for device_id in fresh:
            if device_id in self._building_of:
                continue
            # Only the building is needed: read it from the record (the device's as_dict would do it the long way).
            building = v.as_str(devices[device_id].building, 64)
            if building:
                self._add(device_id, building)
        self._looked_at = count

    def buildings(self) -> list[str]:
        return sorted(self._by_building)

    def ids(self, building: str) -> list[str]:
        return self._by_building.get(building, [])


@dataclass
class ApiState:
    runtime: Runtime
    hub: Hub
    clock_ms: Callable[[], int]
    maintenance: dict[str, m.MaintenanceWindowOut] = field(default_factory=dict)
    _grids: tuple[FiregridConfig, dict[str, str]] | None = field(default=None, init=False, repr=False)
    _locations: tuple[FiregridConfig, dict[str, str]] | None = field(default=None, init=False, repr=False)
    _index: DeviceIndex | None = field(default=None, init=False, repr=False)
    _rules: tuple[object, dict[str, RuleConfig]] | None = field(default=None, init=False, repr=False)

    @property
    def config(self) -> FiregridConfig:
        return self.runtime.config

    @property
    def building_grids(self) -> dict[str, str]:
        """Building id -> grid id (built once per config; treat it as read-only)."""
        config = self.config
        if self._grids is None or self._grids[0] is not config:
            self._grids = (config, {b.id: b.grid for b in config.buildings})
        return self._grids[1]

    @property
    def device_locations(self) -> dict[str, str]:
        """Device id -> where it is (the registry's ``location``; built once per config; treat it as read-only)."""
        config = self.config
        if self._locations is None or self._locations[0] is not config:
            self._locations = (config, {d.id: d.location for d in config.devices if d.location})
        return self._locations[1]

    @property
    def rules(self) -> dict[str, RuleConfig]:
        """Rule id -> the rule as the running engine has it (the config's rules when there is no engine), for
        wording reasons; built once per rule set (treat it as read-only)."""
        engine = self.runtime.engine
        source: object = engine.rule_set if engine is not None else self.config
        if self._rules is None or self._rules[0] is not source:
            if engine is not None:
                rules = engine.rule_set.rules
            else:
                try:
                    rules = load_rule_set(self.config).rules
                except RulesError:
                    rules = ()
            self._rules = (source, {r.id: r for r in rules})
        return self._rules[1]

    def device_index(self) -> DeviceIndex:
        presence = self.runtime.presence
        index = self._index
        if index is None or index.config is not self.config or index.presence is not presence:
            index = self._index = DeviceIndex(self.config, presence)
        return index


STATE_KEY: web.AppKey[ApiState] = web.AppKey("firegrid_api_state", ApiState)


def state_of(call: Call) -> ApiState:
    return call.app[STATE_KEY]


def required(value: _T | None, what: str) -> _T:
    """A dependency of the runtime, or the 503 problem that says it is missing."""
    if value is None:
        raise ApiError(503, f"the {what} is not available in this gateway", type="urn:firegrid:problem:unavailable")
    return value


def alert_store(call: Call) -> AlertStore:
    """The alert store.  Call it off the event loop (``asyncio.to_thread``): its writes fsync (synchronous=FULL) and
    its lock may be held by the gateway's group commit; neither should stall every other request and the live
    stream."""
    return required(state_of(call).runtime.store, "store")


def check_scope(who: Principal, *, building: str | None = None, grid: str | None = None) -> None:
    if building is not None and not who.sees_building(building):
        raise ApiError(403, f"building {building!r} is outside this token's scope", type="urn:firegrid:problem:scope")
    if grid is not None and not who.sees_grid(grid):
        raise ApiError(403, f"grid {grid!r} is outside this token's scope", type="urn:firegrid:problem:scope")
