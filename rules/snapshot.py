"""The snapshot codec: one building's whole rule state (devices, pending rule state, active alerts, maintenance
windows opened at run time) as JSON bytes for the store, and back.

Rule state is saved by rule id, so a snapshot survives a change of the rules: a rule that no longer applies to a
device is dropped on restore, and one that is new starts with nothing pending.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable

import orjson

from rules.compiled import Plan
from rules.state import DRILL, REAL, BState, DevState, Live, RState
from rules.types import DeviceRef, MaintenanceWindow

__all__ = ["SNAPSHOT_VERSION", "SnapshotError", "decode", "encode"]

SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot could not be read (corrupt, or from an incompatible version)."""


def encode(b: BState, *, windows: Iterable[MaintenanceWindow]) -> bytes:
    """The building's state as bytes.  Marks each device's presence as saved (``DevState.saved_seen``)."""
    devices = []
    for space, states in ((REAL, b.devices), (DRILL, b.drills)):
        for dev in states.values():
            dev.saved_seen = dev.last_seen
            rs = {cr.id: st.to_json() for cr, st in zip(dev.plan.rules, dev.rs, strict=True) if st is not None}
            ref = dev.ref
            devices.append(
                {
                    "space": space,
                    "ref": [ref.building, ref.device, ref.kind, ref.floor, ref.grid, ref.registered],
                    "last_ts": dev.last_ts,
                    "last_seen": dev.last_seen,
                    "offline_since": dev.offline_since,
                    "mark": dev.mark,
                    "rs": rs,
                }
            )
    return orjson.dumps(
        {
            "v": SNAPSHOT_VERSION,
            "building": b.id,
            "devices": devices,
            "alerts": [live.to_json() for live in b.alerts.values()],
            # maintenance windows opened at run time (the API) must survive a restart with the alerts they mark
            "maintenance": [[w.id, w.floor, w.device, w.start_ms, w.end_ms, w.reason] for w in windows],
        }
    )


def decode(building: str, data: bytes, *, plan: Callable[[DeviceRef], Plan]) -> tuple[BState, list[MaintenanceWindow]]:
    """The building's state and its saved maintenance windows; ``plan`` gives each device its current plan.  Raises
    :class:`SnapshotError` when the bytes are not a snapshot of this building in this version."""
    try:
        doc = orjson.loads(data)
        if doc.get("v") != SNAPSHOT_VERSION or doc.get("building") != building:
            raise SnapshotError(f"snapshot of {doc.get('building')!r} version {doc.get('v')!r}")
        b = BState(building)
        for raw in doc["alerts"]:
            live = Live.from_json(raw)
            b.alerts[live.key] = live
        windows = [
            MaintenanceWindow(wid, building, floor, device, start, end, reason)
            for wid, floor, device, start, end, reason in doc.get("maintenance", ())
        ]
        for raw in doc["devices"]:
            ref = DeviceRef(*raw["ref"])
            space = int(raw["space"])
            dev = DevState(ref, plan(ref), space, int(raw["last_seen"]))
            dev.last_ts = int(raw["last_ts"])
            dev.offline_since = raw["offline_since"]
            dev.mark = raw.get("mark")  # absent from a snapshot written before the fast lane
            for rule_id, sraw in raw["rs"].items():
                cr = dev.plan.by_id.get(rule_id)
                if cr is None:
                    continue
                st = RState()
                st.live = b.alerts.get(sraw["live"]) if sraw["live"] else None
                st.since = sraw["since"]
                st.csince = sraw["csince"]
                st.value = sraw["value"]
                st.ev = [tuple(e) for e in sraw["ev"]] if sraw["ev"] is not None else None
                st.buf = array("d", sraw["buf"]) if sraw["buf"] is not None else None
                st.hist = sraw["hist"]
                dev.rs[cr.idx] = st
            b.space(space)[ref.device] = dev
    except SnapshotError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"cannot restore building {building!r}: {exc}") from None
    return b, windows
