"""Maintenance windows: the devices, floors and buildings under test, by building.

An alert raised inside a window is a ``test`` alert for its whole life.  What happens when a window ends (its test
alerts cleared, rules re-armed) is the engine's: it needs the rule mechanics.  This module only knows which windows
exist and what they cover.
"""

from __future__ import annotations

from rules.state import Live
from rules.types import DeviceRef, MaintenanceWindow

__all__ = ["Maintenance", "covers"]


def covers(window: MaintenanceWindow, live: Live) -> bool:
    """Whether the window's floor and device scope takes in the alert (its building is the caller's to check)."""
    return (window.floor is None or live.floor == window.floor) and (
        window.device is None or live.device == window.device
    )


class Maintenance:
    """The windows currently known, installed by config, the API or a snapshot, each until it ends."""

    __slots__ = ("_by_building",)

    def __init__(self) -> None:
        self._by_building: dict[str, dict[str, MaintenanceWindow]] = {}

    def add(self, window: MaintenanceWindow) -> None:
        """Install (or replace, by id) a window."""
        self._by_building.setdefault(window.building, {})[window.id] = window

    def get(self, building: str, window_id: str) -> MaintenanceWindow | None:
        windows = self._by_building.get(building)
        return windows.get(window_id) if windows else None

    def pop(self, building: str, window_id: str) -> MaintenanceWindow | None:
        windows = self._by_building.get(building)
        return windows.pop(window_id, None) if windows else None

    def drop(self, building: str) -> None:
        """Forget every window of the building (the engine let the building go to another gateway)."""
        self._by_building.pop(building, None)

    def find(self, window_id: str) -> MaintenanceWindow | None:
        """The window with that id, in whichever building it is."""
        for windows in self._by_building.values():
            window = windows.get(window_id)
            if window is not None:
                return window
        return None

    def of(self, building: str) -> list[MaintenanceWindow]:
        windows = self._by_building.get(building)
        return list(windows.values()) if windows else []

    def all(self) -> list[MaintenanceWindow]:
        return [w for windows in self._by_building.values() for w in windows.values()]

    def under_test(self, ref: DeviceRef, ts: int) -> bool:
        """Whether a window covers the device at ``ts``."""
        windows = self._by_building.get(ref.building)
        if not windows:
            return False
        for w in windows.values():
            if (
                w.start_ms <= ts < w.end_ms
                and (w.floor is None or w.floor == ref.floor)
                and (w.device is None or w.device == ref.device)
            ):
                return True
        return False
