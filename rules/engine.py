"""The rules engine: readings, events and a clock in; alert transitions out.  Pure: no I/O, no wall clock.

State lives per building (the unit of partitioning): device state (windows, pending timers), the building's active
alerts (which ``correlate`` looks at) and the drill space.  ``snapshot(building)``/``restore(building, data)`` save and
load one building; ``seed_active`` tells a restarted engine which alerts the store already holds open.

Time: every decision is stamped with a time derived from the inputs (a sample's ``ts``, or ``since + for`` when a
timer fires), never with the moment ``tick`` happened to be called, so a replay gives the same timeline however
often it ticks.  ``tick(now)`` only decides *when* timers are looked at; the engine's clock never goes backwards.

Design notes (see ``docs/rules.md``):

* the newest sample of a device wins: a sample older than the newest one seen (by at most ``REORDER_MS``) arrived
  out of order and does not move level rules; one older by more means the device's clock jumped back, and the
  device's timers are re-based on it;
* drill traffic has its own device state and alert keys (``drill:`` prefix), so a drill never masks, confirms or
  clears a real alarm;
* an alert raised inside a maintenance window is a ``test`` alert for its whole life; when the window ends, it is
  cleared and the rule re-armed, so a condition that is still there is raised for real.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import orjson

from rules.compiled import ABSENCE, COUNT, EVENT, RATE, CRule, Plan, build_plan
from rules.model import RuleConfig
from rules.ruleset import RuleSet
from rules.types import (
    ActiveAlert,
    AlertTransition,
    DeviceEvent,
    DeviceRef,
    Evidence,
    Input,
    MaintenanceWindow,
    MetricValue,
    Reading,
    Severity,
    StatusChange,
)

__all__ = ["REORDER_MS", "Engine", "RuleSet", "SnapshotError", "alert_key"]

# A quiet reading only moves the device's last_seen; its building is reported dirty for that only once the saved
# value is this stale, so the gateway does not re-snapshot every building on every commit.  A restored engine may
# then think a device spoke up to this much earlier than it did: absence is reported at most this much early.
PRESENCE_SAVE_MS = 60_000
REORDER_MS = 60_000  # a sample older than the device's newest by more than this is a clock jump, not reordering
EVIDENCE_MAX = 20  # samples kept per alert as its evidence (the first one and the latest 19)
RATE_BUF_MAX = 32  # samples kept per rate-of-rise window
_SNAPSHOT_VERSION = 1
REAL, DRILL, MAINT = 0, 1, 2


class SnapshotError(ValueError):
    """A snapshot could not be read (corrupt, or from an incompatible version)."""


def alert_key(rule: str, building: str, floor: int | None, device: str | None, *, drill: bool = False) -> str:
    """Stable identity of one condition in one scope: rule + building + floor + device."""
    if device is not None:
        key = f"{rule}/{building}/{device}"
    elif floor is not None:
        key = f"{rule}/{building}/F{floor}"
    else:
        key = f"{rule}/{building}"
    return "drill:" + key if drill else key


class Live:
    """An active alert, as the engine last reported it."""

    __slots__ = (
        "confirmed",
        "device",
        "drill",
        "flapping",
        "floor",
        "key",
        "rule",
        "severity",
        "since",
        "test",
        "value",
    )

    def __init__(
        self,
        *,
        key: str,
        rule: str,
        severity: Severity,
        floor: int | None,
        device: str | None,
        since: int,
        value: MetricValue | None,
        confirmed: bool | None,
        test: bool,
        drill: bool,
        flapping: bool = False,
    ) -> None:
        self.key = key
        self.rule = rule
        self.severity = severity
        self.floor = floor
        self.device = device
        self.since = since
        self.value = value
        self.confirmed = confirmed
        self.test = test
        self.drill = drill
        self.flapping = flapping

    def to_json(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in Live.__slots__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Live:
        data = dict(data)
        data["severity"] = Severity(data["severity"])
        return cls(**data)


class RState:
    """Per (device, rule) state.  Allocated only while the rule has something to remember."""

    __slots__ = ("buf", "csince", "ev", "hist", "live", "since", "value")

    def __init__(self) -> None:
        self.live: Live | None = None
        self.since: int | None = None  # alarm condition (or last occurrence, for events) since
        self.csince: int | None = None  # clear condition since (for clear_after / flapping hold)
        self.value: MetricValue | None = None  # the value that raised or is about to raise
        self.ev: list[tuple[int, MetricValue]] | None = None  # evidence while pending
        self.buf: array[float] | None = None  # rate of rise: ts, value, ts, value, ...
        self.hist: list[int] | None = None  # state changes (flapping) or raise times (count)

    def idle(self) -> bool:
        return self.live is None and self.since is None and self.csince is None and self.buf is None and not self.hist

    def to_json(self) -> dict[str, Any]:
        return {
            "live": self.live.key if self.live else None,
            "since": self.since,
            "csince": self.csince,
            "value": self.value,
            "ev": self.ev,
            "buf": list(self.buf) if self.buf is not None else None,
            "hist": self.hist,
        }


class DevState:
    __slots__ = ("due", "last_seen", "last_ts", "offline_since", "plan", "ref", "rs", "saved_seen", "space")

    def __init__(self, ref: DeviceRef, plan: Plan, space: int, last_seen: int) -> None:
        self.ref = ref
        self.plan = plan
        self.space = space
        self.rs: list[RState | None] = [None] * len(plan.rules)
        self.last_ts = -(2**62)  # newest sample ts
        self.last_seen = last_seen  # engine time the device was last heard from
        self.offline_since: int | None = None
        self.due: int | None = None  # the deadline this device has in the timer heap
        self.saved_seen = last_seen  # last_seen as of the building's latest snapshot


class BState:
    __slots__ = ("alerts", "devices", "drills", "id")

    def __init__(self, building: str) -> None:
        self.id = building
        self.devices: dict[str, DevState] = {}
        self.drills: dict[str, DevState] = {}
        self.alerts: dict[str, Live] = {}  # active alerts of this building, by key

    def space(self, space: int) -> dict[str, DevState]:
        return self.drills if space == DRILL else self.devices


def _sort(out: list[AlertTransition]) -> list[AlertTransition]:
    if len(out) > 1:
        # fire first; then by time; then by key, so the order never depends on timer-heap history (a restored
        # engine emits exactly what an uninterrupted one would).  Stable: one key's own sequence is kept.
        out.sort(key=lambda t: (-t.severity, t.ts_ms, t.key))
    return out


class Engine:
    """The rules engine.  Not thread-safe: the gateway serialises calls (``runtime.engine_lock``)."""

    def __init__(self, rule_set: RuleSet, *, registry: Mapping[str, DeviceRef]) -> None:
        self._rule_set = rule_set
        self._registry = registry
        alerting = [r for r in rule_set.rules if r.enabled]
        self._device_rules = [r for r in alerting if r.kind in ("threshold", "rate_of_rise", "state", "event")]
        self._device_rules += [r for r in alerting if r.kind in ("absence", "count")]
        self._correlates = [r for r in alerting if r.kind == "correlate"]
        self._flapping = [r for r in alerting if r.kind == "flapping"]
        self._corr_by_member: dict[str, list[int]] = {}
        for ci, corr in enumerate(self._correlates):
            for member in corr.rules or ():
                self._corr_by_member.setdefault(member, []).append(ci)
        self._plans: dict[tuple[Any, ...], Plan] = {}
        # Devices named by id in a selector or override get their own plan; every other device's plan depends only
        # on where it is and what it is, so 100,000 devices resolve their rules in a few hundred distinct shapes.
        self._named_devices: set[str] = set()
        for rule in rule_set.rules:
            self._named_devices.update(rule.match.devices or ())
            for o in rule.overrides:
                self._named_devices.update(o.devices or ())
        self._plan_by_shape: dict[tuple[str, str, int | None, str | None, int], Plan] = {}
        # ... and only on the parts of "where" some selector or override looks at: with the shipped rules (which
        # select by kind alone) a district's devices share a handful of shapes instead of one per building and floor
        # (100,000 devices on 20 floors of 2,000 buildings: 40,000 shapes -> 4, adopting them 870 -> 215-310 ms).
        selectors = [(rule.match, rule.overrides) for rule in rule_set.rules]
        self._shape_building = any(
            m.building is not None or any(o.building is not None for o in overrides) for m, overrides in selectors
        )
        self._shape_floor = any(
            m.floor is not None or any(o.floor is not None for o in overrides) for m, overrides in selectors
        )
        self._shape_grid = any(m.grid is not None for m, _ in selectors)
        self._presence_held_since: int | None = None
        self._corr_cache: dict[tuple[int, str, int | None, str, str, str | None], CRule | None] = {}
        self._buildings: dict[str, BState] = {}
        self._dirty: set[str] = set()
        self._heap: list[tuple[int, str, str, int]] = []
        self._now: int | None = None  # engine clock: the latest tick
        self._maint: dict[str, dict[str, MaintenanceWindow]] = {}
        for window in rule_set.maintenance:
            self.set_maintenance(window)

    # --- public API -------------------------------------------------------------------------------------------

    @property
    def rule_set(self) -> RuleSet:
        return self._rule_set

    @property
    def now_ms(self) -> int | None:
        return self._now

    def process(self, item: Input) -> list[AlertTransition]:
        """Judge one input; returns the transitions it caused, fire first."""
        out: list[AlertTransition] = []
        if type(item) is Reading:
            # The hot path, inlined on purpose (see bench/rules.py): a normal reading costs a few dict lookups and
            # two comparisons per rule, and allocates nothing.
            ref = item.ref
            b = self._buildings.get(ref.building)
            if b is None:
                b = self._building(ref.building)
            drill = item.drill
            dev = (b.drills if drill else b.devices).get(ref.device)
            ts = item.ts_ms
            if dev is None or (dev.ref is not ref and dev.ref.kind != ref.kind):
                dev = self._new_device(b, ref, DRILL if drill else REAL, ts)
            now = self._now
            if now is None:
                now = ts
            if now > dev.last_seen:
                dev.last_seen = now
                if now - dev.saved_seen >= PRESENCE_SAVE_MS:
                    self._dirty.add(b.id)
            rs = dev.rs
            plan = dev.plan
            absence = plan.absence
            if dev.offline_since is not None or (absence is not None and rs[absence.idx] is not None):
                self._seen(b, dev, ts, out)
            if ts < dev.last_ts:
                if dev.last_ts - ts <= REORDER_MS:
                    return _sort(out)  # out of order: the newer sample already decided
                self._rebase(b, dev, ts)
            dev.last_ts = ts
            by_metric = plan.quiet
            for metric, value in item.values.items():
                crs = by_metric.get(metric)
                if crs is None:
                    continue
                for idx, lo, hi, cr in crs:
                    st = rs[idx]
                    if st is None:
                        if lo is not None and lo <= value <= hi:  # type: ignore[operator]
                            continue  # the common case: a normal value and nothing pending
                        st = rs[idx] = RState()
                    if cr.kind != RATE or st.live is not None or st.since is not None or st.buf is None:
                        self._dirty.add(b.id)
                    self._level(b, dev, cr, st, value, ts, out)
                    if st.idle():
                        rs[idx] = None
        elif type(item) is DeviceEvent:
            self._event(item, out)
        elif type(item) is StatusChange:
            self._status(item, out)
        else:
            raise TypeError(f"not an engine input: {type(item).__name__}")
        return _sort(out) if out else out

    def start(self, now_ms: int) -> None:
        """Set the clock and adopt the registry (every registered device's absence clock starts at ``now_ms``)
        without firing any timer: the next ``tick`` fires what is due.  What the first ``tick`` would do anyway;
        a service calls it during start-up, after restoring its snapshots, so that building a district's device
        states (100,000 of them) is not a stall of a running event loop.  No-op once the clock is set."""
        if self._now is None:
            self._now = now_ms
            self._adopt_registry(now_ms)

    def tick(self, now_ms: int, *, limit: int | None = None) -> list[AlertTransition]:
        """Advance the engine clock to ``now_ms`` and fire every timer due by then, in time order.

        ``limit``: look at no more than that many timers; the rest stay due (``behind``) for the next tick.  A
        district whose deadlines coincide (100,000 registered devices adopted at one start, never heard from) would
        otherwise be one tick of seconds; in slices, the caller's event loop takes in alarms between them.  Each
        transition carries the time its timer was due, however late it is emitted."""
        out: list[AlertTransition] = []
        if self._now is None:
            self._now = now_ms
            self._adopt_registry(now_ms)
        elif now_ms < self._now:
            return out  # the caller's clock jumped back: timers wait until it catches up again
        self._now = now_ms
        heap = self._heap
        left = limit if limit is not None else -1
        while heap and heap[0][0] <= now_ms and left != 0:
            left -= 1
            due, building, device, space = heapq.heappop(heap)
            if space == MAINT:
                window = self._maint.get(building, {}).get(device)
                if window is not None and window.end_ms == due:
                    self._maint_end(building, device, due, out)
                continue
            b = self._buildings.get(building)
            dev = b.space(space).get(device) if b is not None else None
            if b is None or dev is None or dev.due != due:
                continue  # superseded by an earlier deadline for the same device
            dev.due = None
            acr = dev.plan.absence
            if acr is not None and dev.offline_since is None and self._presence_held_since is None and not any(dev.rs):
                # the common case: a device's absence deadline came up but it has spoken since; just move it on
                at = dev.last_seen + acr.silent_ms
                if at > now_ms:
                    self._arm(b, dev, at)
                    continue
            self._dirty.add(building)
            self._due(b, dev, now_ms, out)
            self._rearm(b, dev)
        return _sort(out)

    def behind(self) -> bool:
        """Timers due by the engine clock are still waiting: a ``tick`` with a ``limit`` stopped short of them."""
        return bool(self._heap) and self._now is not None and self._heap[0][0] <= self._now

    def buildings(self) -> list[str]:
        return sorted(self._buildings)

    def dirty_snapshots(self) -> dict[str, bytes]:
        """A snapshot of each building whose state changed since the last call (what the store must save)."""
        return {building: self.snapshot(building) for building in self.dirty_buildings()}

    def dirty_buildings(self) -> set[str]:
        """Buildings whose state changed since the last call (and so need a new snapshot)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    def active(self, building: str | None = None) -> list[AlertTransition]:
        """The alerts the engine holds active (as ``raised`` transitions), for inspection and tests."""
        out: list[AlertTransition] = []
        for b in [self._buildings[building]] if building in self._buildings else self._buildings.values():
            for live in b.alerts.values():
                out.append(self._transition("raised", b.id, live, live.since, "active"))
        return _sort(out)

    def set_maintenance(self, window: MaintenanceWindow) -> list[AlertTransition]:
        """Put a device, floor or building under test.  Returns transitions if the window is already over."""
        self._install_window(window)
        if self._now is not None and window.end_ms <= self._now:
            return self.tick(self._now)
        return []

    def _install_window(self, window: MaintenanceWindow) -> None:
        self._maint.setdefault(window.building, {})[window.id] = window
        self._dirty.add(window.building)
        heapq.heappush(self._heap, (window.end_ms, window.building, window.id, MAINT))

    def clear_maintenance(self, window_id: str, *, now_ms: int | None = None) -> list[AlertTransition]:
        """End a window early (at ``now_ms``, default the engine clock): its test alerts are cleared and the rules
        re-armed, so a condition still present is raised for real (at once, or after its ``for``, on ``tick``)."""
        out: list[AlertTransition] = []
        for building, windows in self._maint.items():
            window = windows.get(window_id)
            if window is not None:
                now = now_ms if now_ms is not None else self._now if self._now is not None else window.start_ms
                self._maint_end(building, window_id, max(now, window.start_ms), out)
                break
        return _sort(out)

    def suspend_presence(self, now_ms: int) -> None:
        """The gateway lost its broker connection: silence now says nothing about the devices, so absence timers
        stop (otherwise every device of the district would be reported silent at once, an SMS storm)."""
        if self._presence_held_since is None:
            self._presence_held_since = now_ms

    def resume_presence(self, now_ms: int) -> None:
        """Connected again: every device gets a fresh silent period from ``now_ms``."""
        if self._presence_held_since is None:
            return
        self._presence_held_since = None
        for b in self._buildings.values():
            for dev in b.devices.values():
                if dev.last_seen < now_ms:
                    dev.last_seen = now_ms
                if dev.offline_since is not None and dev.offline_since < now_ms:
                    dev.offline_since = now_ms
                self._rearm(b, dev)

    def maintenance(self) -> list[MaintenanceWindow]:
        return [w for windows in self._maint.values() for w in windows.values()]

    def seed_active(self, alerts: Iterable[ActiveAlert | AlertTransition]) -> None:
        """Mark alerts the store holds open as active, so a restarted engine does not raise them again.

        Keys the engine does not know (a rule since removed, an unknown building) are kept in the building's active
        set, so they are at least reported by ``active()``; they never clear by themselves.
        """
        for alert in alerts:
            since = alert.since_ms if isinstance(alert, ActiveAlert) else alert.ts_ms
            drill = alert.drill
            b = self._building(alert.building)
            self._dirty.add(b.id)
            live = b.alerts.get(alert.key)
            if live is None:
                live = Live(
                    key=alert.key,
                    rule=alert.rule,
                    severity=alert.severity,
                    floor=alert.floor,
                    device=alert.device,
                    since=since,
                    value=alert.value,
                    confirmed=alert.confirmed,
                    test=alert.test,
                    drill=drill,
                )
                b.alerts[alert.key] = live
            if alert.device is None:
                continue
            dev = self._device_state(b, alert.device, DRILL if drill else REAL, since)
            if dev is None:
                continue
            cr = dev.plan.by_id.get(alert.rule)
            if cr is None:
                continue
            st = dev.rs[cr.idx]
            if st is None:
                st = dev.rs[cr.idx] = RState()
            st.live = live
            st.since = since if cr.kind == EVENT else None
            st.value = alert.value
            if cr.kind == COUNT and not st.hist:
                st.hist = [since] * cr.count  # the raises behind it are unknown: it clears one window after raising
            self._rearm(b, dev)

    def snapshot(self, building: str) -> bytes:
        """The building's whole rule state as bytes (JSON), for the store."""
        b = self._buildings.get(building)
        if b is None:
            b = BState(building)
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
                        "rs": rs,
                    }
                )
        return orjson.dumps(
            {
                "v": _SNAPSHOT_VERSION,
                "building": building,
                "devices": devices,
                "alerts": [live.to_json() for live in b.alerts.values()],
                # maintenance windows opened at run time (the API) must survive a restart with the alerts they mark
                "maintenance": [
                    [w.id, w.floor, w.device, w.start_ms, w.end_ms, w.reason]
                    for w in self._maint.get(building, {}).values()
                ],
            }
        )

    def restore(self, building: str, data: bytes) -> None:
        """Replace the building's state with a snapshot.  Rules that no longer exist are dropped."""
        try:
            doc = orjson.loads(data)
            if doc.get("v") != _SNAPSHOT_VERSION or doc.get("building") != building:
                raise SnapshotError(f"snapshot of {doc.get('building')!r} version {doc.get('v')!r}")
            b = BState(building)
            for raw in doc["alerts"]:
                live = Live.from_json(raw)
                b.alerts[live.key] = live
            self._buildings[building] = b
            for wid, floor, device, start, end, reason in doc.get("maintenance", ()):
                # installed without ticking: a window that ended meanwhile is closed by the next tick
                self._install_window(MaintenanceWindow(wid, building, floor, device, start, end, reason))
            for raw in doc["devices"]:
                ref = DeviceRef(*raw["ref"])
                space = int(raw["space"])
                dev = DevState(ref, self._plan(ref), space, int(raw["last_seen"]))
                dev.last_ts = int(raw["last_ts"])
                dev.offline_since = raw["offline_since"]
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
                self._rearm(b, dev)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"cannot restore building {building!r}: {exc}") from None

    # --- inputs -----------------------------------------------------------------------------------------------

    def _event(self, e: DeviceEvent, out: list[AlertTransition]) -> None:
        ref = e.ref
        b = self._buildings.get(ref.building) or self._building(ref.building)
        space = DRILL if e.drill else REAL
        dev = b.space(space).get(ref.device)
        if dev is None or (dev.ref is not ref and dev.ref.kind != ref.kind):
            dev = self._new_device(b, ref, space, e.ts_ms)
        self._dirty.add(b.id)
        self._seen(b, dev, e.ts_ms, out)
        ts = e.ts_ms
        for cr in dev.plan.event_clears.get(e.type, ()):
            st = dev.rs[cr.idx]
            if st is not None and st.live is not None:
                self._clear(b, dev, cr, st, ts, f"{cr.label}: cleared by {e.type} event", out)
                dev.rs[cr.idx] = None if st.idle() else st
        for cr in dev.plan.events.get(e.type, ()):
            st = dev.rs[cr.idx]
            if st is None:
                st = dev.rs[cr.idx] = RState()
            st.since = ts if st.since is None else max(st.since, ts)  # last occurrence, for clear_after
            if st.live is None:
                st.value = e.type
                st.ev = [(ts, e.type if e.detail is None else f"{e.type}: {e.detail}")]
                detail = f" ({e.detail})" if e.detail else ""
                self._raise(b, dev, cr, st, ts, f"{cr.label}: {e.type} event{detail}", "event", out)
            if cr.clear_after_ms:
                self._arm(b, dev, st.since + cr.clear_after_ms)

    def _status(self, s: StatusChange, out: list[AlertTransition]) -> None:
        ref = s.ref
        b = self._buildings.get(ref.building) or self._building(ref.building)
        dev = b.devices.get(ref.device)
        if dev is None:
            if ref.kind == "unknown" and ref.device in self._registry:
                ref = self._registry[ref.device]
            dev = self._new_device(b, ref, REAL, s.ts_ms)
        self._dirty.add(b.id)
        if s.online:
            self._seen(b, dev, s.ts_ms, out)
        elif dev.offline_since is None:
            dev.offline_since = s.ts_ms
            cr = dev.plan.absence
            if cr is not None and cr.offline_ms is not None:
                self._arm(b, dev, s.ts_ms + cr.offline_ms)

    # --- rule mechanics ---------------------------------------------------------------------------------------

    def _seen(self, b: BState, dev: DevState, ts: int, out: list[AlertTransition]) -> None:
        """The device spoke: presence is restored (engine time, so a skewed device clock cannot fake silence)."""
        now = self._now if self._now is not None else ts
        if now > dev.last_seen:
            dev.last_seen = now
        dev.offline_since = None
        cr = dev.plan.absence
        if cr is not None:
            st = dev.rs[cr.idx]
            if st is not None and st.live is not None:
                self._clear(b, dev, cr, st, max(ts, st.live.since), f"{cr.label}: device is reporting again", out)
                dev.rs[cr.idx] = None
                if dev.space == REAL:
                    self._arm(b, dev, dev.last_seen + cr.silent_ms)  # watch for the next silence

    def _rebase(self, b: BState, dev: DevState, ts: int) -> None:
        """The device's clock jumped back: pending timers restart from its new time instead of never ending."""
        for st in dev.rs:
            if st is None:
                continue
            if st.since is not None and st.since > ts:
                st.since = ts
            if st.csince is not None and st.csince > ts:
                st.csince = ts
            if st.buf is not None:
                st.buf = None
        # Deadlines only moved earlier, and `_arm` keeps the earliest: re-arm, or a rule this reading does not
        # touch (a fault event's clear_after, another metric's `for`) would wait for some later wake-up of the device
        # (none at all for a drill device, which has no absence timer).
        self._rearm(b, dev)

    def _level(
        self, b: BState, dev: DevState, cr: CRule, st: RState, value: MetricValue, ts: int, out: list[AlertTransition]
    ) -> None:
        if cr.kind == RATE:
            rate = self._rate(cr, st, value, ts)
            if rate is None:
                return
            alarm = rate + 1e-9 >= cr.rate  # "exactly 8.3 °C/min" must not be lost to float rounding
            clear = not alarm
            shown: MetricValue = round(rate, 2)
        else:
            alarm = cr.alarm(value)
            clear = cr.clear(value)
            shown = value
        if st.live is None:
            if not alarm:
                st.since = None
                st.ev = None
                return
            if st.since is None:
                st.since = ts
                st.ev = []
            ev = st.ev
            assert ev is not None
            if cr.kind == RATE and st.buf is not None:
                # a rise is explained by the whole window, not by the sample that completed it
                buf = st.buf
                ev[:] = [(int(buf[i]), buf[i + 1]) for i in range(0, len(buf), 2)][-EVIDENCE_MAX:]
            else:
                if len(ev) >= EVIDENCE_MAX:
                    del ev[1]  # keep the first sample (when it started) and the latest ones
                ev.append((ts, value))
            st.value = shown
            if ts - st.since >= cr.for_ms:
                self._raise(b, dev, cr, st, ts, self._reason(cr, shown), cr.metric, out)
            else:
                self._arm(b, dev, st.since + cr.for_ms)
            return
        if clear:
            if st.csince is None:
                st.csince = ts
            wait = cr.flap_hold_ms if st.live.flapping else cr.clear_after_ms
            if ts - st.csince >= wait:
                self._try_clear(b, dev, cr, st, ts, out)
            else:
                self._arm(b, dev, st.csince + wait)
        else:
            st.csince = None

    def _rate(self, cr: CRule, st: RState, value: MetricValue, ts: int) -> float | None:
        """Rise per minute over the window, robust to one bad sample: median of the first three samples against the
        median of the last three.  None while the window holds too few samples or spans too little time."""
        buf = st.buf
        if buf is None:
            buf = st.buf = array("d")
        assert not isinstance(value, str)
        buf.append(float(ts))
        buf.append(float(value))
        cutoff = ts - cr.window_ms
        drop = 0
        n = len(buf)
        while drop < n and buf[drop] < cutoff:
            drop += 2
        if len(buf) - drop > 2 * RATE_BUF_MAX:
            drop = len(buf) - 2 * RATE_BUF_MAX
        if drop:
            del buf[:drop]
        count = len(buf) // 2
        if count < cr.min_samples:
            return None
        t0 = _median3(buf[0], buf[2], buf[4])
        v0 = _median3(buf[1], buf[3], buf[5])
        t1 = _median3(buf[-6], buf[-4], buf[-2])
        v1 = _median3(buf[-5], buf[-3], buf[-1])
        span = t1 - t0
        if span < cr.window_ms / 4:
            return None  # too little time between the ends to call it a rate (a gap or a burst)
        return (v1 - v0) * 60_000.0 / span

    def _reason(self, cr: CRule, value: MetricValue) -> str:
        if isinstance(value, bool) or not isinstance(value, float | int):
            return cr.describe()
        return f"{cr.describe()} (value {value:g})"

    def _raise(
        self,
        b: BState,
        dev: DevState,
        cr: CRule,
        st: RState,
        ts: int,
        reason: str,
        metric: str,
        out: list[AlertTransition],
    ) -> None:
        ref = dev.ref
        drill = dev.space == DRILL
        key = alert_key(cr.id, ref.building, ref.floor, ref.device, drill=drill)
        fire = cr.severity == Severity.FIRE
        live = Live(
            key=key,
            rule=cr.id,
            severity=cr.severity,
            floor=ref.floor,
            device=ref.device,
            since=ts,
            value=st.value,
            confirmed=False if fire else None,
            test=self._under_test(ref, ts),
            drill=drill,
        )
        b.alerts[key] = live
        st.live = live
        evidence = tuple(Evidence(t, ref.device, metric, v) for t, v in st.ev or ())
        st.since = None if cr.kind != EVENT else st.since
        st.ev = None
        st.csince = None
        self._changed(cr, st, ts)
        position = len(out)
        out.append(self._transition("raised", b.id, live, ts, reason, evidence, grid=ref.grid))
        for count_rule in dev.plan.counts.get(cr.id, ()):
            self._count(b, dev, count_rule, ts, out)
        for ci in self._corr_by_member.get(cr.id, ()):
            self._correlate(b, dev, ci, ts, out, position)

    def _try_clear(self, b: BState, dev: DevState, cr: CRule, st: RState, ts: int, out: list[AlertTransition]) -> None:
        live = st.live
        assert live is not None
        if cr.flap_changes and not live.flapping and st.hist is not None:
            cutoff = ts - cr.flap_window_ms
            st.hist = [t for t in st.hist if t >= cutoff]
            if len(st.hist) + 1 > cr.flap_changes:
                # flapping: hold the alert active instead of clearing and raising it again and again
                live.flapping = True
                reason = f"{cr.label}: flapping ({len(st.hist) + 1} changes within {cr.flap_window_ms // 1000} s)"
                out.append(self._transition("updated", b.id, live, ts, reason, grid=dev.ref.grid))
                self._arm(b, dev, (st.csince or ts) + cr.flap_hold_ms)
                return
        self._clear(b, dev, cr, st, ts, f"{cr.label}: back to normal", out)

    def _clear(
        self, b: BState, dev: DevState, cr: CRule, st: RState, ts: int, reason: str, out: list[AlertTransition]
    ) -> None:
        live = st.live
        assert live is not None
        st.live = None
        st.csince = None
        st.since = None
        st.ev = None
        b.alerts.pop(live.key, None)
        if live.flapping:
            st.hist = None
        else:
            self._changed(cr, st, ts)
        out.append(self._transition("cleared", b.id, live, ts, reason, grid=dev.ref.grid))
        for ci in self._corr_by_member.get(cr.id, ()):
            self._uncorrelate(b, dev, ci, ts, out)

    def _changed(self, cr: CRule, st: RState, ts: int) -> None:
        if cr.flap_changes:
            if st.hist is None:
                st.hist = []
            st.hist.append(ts)
            if len(st.hist) > 4 * cr.flap_changes:
                del st.hist[0]

    def _count(self, b: BState, dev: DevState, cr: CRule, ts: int, out: list[AlertTransition]) -> None:
        st = dev.rs[cr.idx]
        if st is None:
            st = dev.rs[cr.idx] = RState()
        hist = st.hist if st.hist is not None else []
        cutoff = ts - cr.window_ms
        hist = [t for t in hist if t > cutoff]
        hist.append(ts)
        del hist[: max(0, len(hist) - 4 * cr.count)]
        st.hist = hist
        if st.live is None and len(hist) >= cr.count:
            st.value = len(hist)
            st.ev = [(t, cr.id) for t in hist[-EVIDENCE_MAX:]]
            reason = (
                f"{cr.label}: {', '.join(sorted(cr.members))} raised {len(hist)} times within {cr.window_ms // 1000} s"
            )
            self._raise(b, dev, cr, st, ts, reason, "raised", out)
        self._arm(b, dev, hist[0] + cr.window_ms)

    def _corr_rule(self, ci: int, ref: DeviceRef) -> CRule | None:
        key = (ci, ref.building, ref.floor, ref.device, ref.kind, ref.grid)
        if key in self._corr_cache:
            return self._corr_cache[key]
        rule = self._correlates[ci]
        found: CRule | None = None
        if rule.match.matches(kind=ref.kind, building=ref.building, floor=ref.floor, device=ref.device, grid=ref.grid):
            effective = _apply_overrides(rule, ref)
            if effective is not None:
                found = CRule(effective, idx=-1, heartbeat_s=0, flap=None)
        if len(self._corr_cache) < 100_000:
            self._corr_cache[key] = found
        return found

    def _correlate(self, b: BState, dev: DevState, ci: int, ts: int, out: list[AlertTransition], position: int) -> None:
        cr = self._corr_rule(ci, dev.ref)
        if cr is None:
            return
        drill = dev.space == DRILL
        floor = dev.ref.floor if cr.scope_floor else None
        skey = alert_key(cr.id, b.id, floor, None, drill=drill)
        members = [
            live
            for live in b.alerts.values()
            if live.rule in cr.members
            and live.drill == drill
            and live.device is not None
            and (floor is None or live.floor == floor)
        ]
        if skey not in b.alerts:
            near = [m for m in members if abs(m.since - ts) <= cr.window_ms]
            devices = {m.device for m in near}
            if len(devices) < cr.min_devices:
                return
            live = Live(
                key=skey,
                rule=cr.id,
                severity=cr.severity,
                floor=floor,
                device=None,
                since=ts,
                value=len(devices),
                confirmed=True,
                test=all(m.test for m in near),
                drill=drill,
            )
            b.alerts[skey] = live
            evidence = tuple(
                Evidence(m.since, m.device or "", m.rule, m.value if m.value is not None else "")
                for m in sorted(near, key=lambda m: m.since)[:EVIDENCE_MAX]
            )
            where = f"floor {floor}" if floor is not None else "the building"
            reason = (
                f"{cr.label}: {len(devices)} devices in alarm on {where} within {cr.window_ms // 1000} s "
                f"({', '.join(sorted(d for d in devices if d))})"
            )
            out.append(self._transition("raised", b.id, live, ts, reason, evidence, grid=dev.ref.grid))
        # every fire alert in the scope is now confirmed
        for m in members:
            if m.severity == Severity.FIRE and not m.confirmed:
                m.confirmed = True
                if m.since == ts and position < len(out) and out[position].key == m.key:
                    out[position] = replace(out[position], confirmed=True)
                else:
                    where = f"floor {floor}" if floor is not None else "the building"
                    reason = f"{cr.label}: a second device is in alarm on {where}"
                    out.append(self._transition("updated", b.id, m, ts, reason, grid=dev.ref.grid))

    def _uncorrelate(self, b: BState, dev: DevState, ci: int, ts: int, out: list[AlertTransition]) -> None:
        cr = self._corr_rule(ci, dev.ref)
        if cr is None:
            return
        drill = dev.space == DRILL
        floor = dev.ref.floor if cr.scope_floor else None
        skey = alert_key(cr.id, b.id, floor, None, drill=drill)
        live = b.alerts.get(skey)
        if live is None:
            return
        for m in b.alerts.values():
            if m.rule in cr.members and m.drill == drill and (floor is None or m.floor == floor):
                return  # a member is still in alarm: the confirmed fire stays
        del b.alerts[skey]
        out.append(self._transition("cleared", b.id, live, ts, f"{cr.label}: no detector in alarm any more"))

    # --- timers -----------------------------------------------------------------------------------------------

    def _arm(self, b: BState, dev: DevState, at: int) -> None:
        if dev.due is None or at < dev.due:
            dev.due = at
            heapq.heappush(self._heap, (at, b.id, dev.ref.device, dev.space))

    def _rearm(self, b: BState, dev: DevState) -> None:
        """Arm the device's earliest pending deadline (``_arm`` keeps the earlier of it and what is armed)."""
        nxt = self._next_due(dev)
        if nxt is not None:
            self._arm(b, dev, nxt)

    def _next_due(self, dev: DevState) -> int | None:
        best: int | None = None
        for cr, st in zip(dev.plan.rules, dev.rs, strict=True):
            if st is None:
                continue
            at: int | None = None
            if cr.kind == EVENT:
                if st.live is not None and cr.clear_after_ms and st.since is not None:
                    at = st.since + cr.clear_after_ms
            elif cr.kind == COUNT:
                if st.hist:
                    at = st.hist[0] + cr.window_ms
            elif cr.kind == ABSENCE:
                continue
            elif st.live is None:
                if st.since is not None:
                    at = st.since + cr.for_ms
            elif st.csince is not None:
                at = st.csince + (cr.flap_hold_ms if st.live.flapping else cr.clear_after_ms)
            if at is not None and (best is None or at < best):
                best = at
        acr = dev.plan.absence
        if acr is not None and dev.space == REAL and self._presence_held_since is None:
            st = dev.rs[acr.idx]
            if st is None or st.live is None:
                at = dev.last_seen + acr.silent_ms
                if dev.offline_since is not None and acr.offline_ms is not None:
                    at = min(at, dev.offline_since + acr.offline_ms)
                if best is None or at < best:
                    best = at
        return best

    def _due(self, b: BState, dev: DevState, now: int, out: list[AlertTransition]) -> None:
        """Fire every timer of one device that is due at ``now``."""
        for cr, st in zip(dev.plan.rules, dev.rs, strict=True):
            if st is None:
                continue
            if cr.kind == EVENT:
                if st.live is not None and cr.clear_after_ms and st.since is not None:
                    at = st.since + cr.clear_after_ms
                    if at <= now:
                        self._clear(
                            b, dev, cr, st, at, f"{cr.label}: not repeated for {cr.clear_after_ms // 1000} s", out
                        )
            elif cr.kind == COUNT:
                if st.hist:
                    hist = st.hist
                    if st.live is not None and len(hist) >= cr.count:
                        # the moment the count fell below `count`: when the raise that kept it there expired
                        at = hist[len(hist) - cr.count] + cr.window_ms
                        if at <= now:
                            reason = f"{cr.label}: fewer than {cr.count} within {cr.window_ms // 1000} s"
                            self._clear(b, dev, cr, st, at, reason, out)
                    st.hist = [t for t in hist if t + cr.window_ms > now]
            elif cr.kind == ABSENCE:
                continue
            elif st.live is None:
                if st.since is not None and st.since + cr.for_ms <= now:
                    at = st.since + cr.for_ms
                    assert st.value is not None
                    self._raise(b, dev, cr, st, at, self._reason(cr, st.value), cr.metric, out)
            elif st.csince is not None:
                wait = cr.flap_hold_ms if st.live.flapping else cr.clear_after_ms
                if st.csince + wait <= now:
                    self._try_clear(b, dev, cr, st, st.csince + wait, out)
            if st.idle():
                dev.rs[cr.idx] = None
        cr_abs = dev.plan.absence
        if cr_abs is not None and dev.space == REAL and self._presence_held_since is None:
            st = dev.rs[cr_abs.idx]
            if st is None or st.live is None:
                silent_at = dev.last_seen + cr_abs.silent_ms
                offline_at = None
                if dev.offline_since is not None and cr_abs.offline_ms is not None:
                    offline_at = dev.offline_since + cr_abs.offline_ms
                if offline_at is not None and offline_at <= now and offline_at <= silent_at:
                    reason = f"{cr_abs.label}: status offline for {cr_abs.offline_ms // 1000} s"  # type: ignore[operator]
                    self._raise_absence(b, dev, cr_abs, offline_at, "offline", reason, out)
                elif silent_at <= now:
                    reason = f"{cr_abs.label}: silent for {cr_abs.silent_ms // 1000} s"
                    self._raise_absence(b, dev, cr_abs, silent_at, "silent", reason, out)

    def _raise_absence(
        self, b: BState, dev: DevState, cr: CRule, at: int, what: str, reason: str, out: list[AlertTransition]
    ) -> None:
        st = dev.rs[cr.idx]
        if st is None:
            st = dev.rs[cr.idx] = RState()
        st.value = what
        st.ev = [(dev.last_seen, "last_seen")]
        self._raise(b, dev, cr, st, at, reason, "presence", out)

    # --- maintenance ------------------------------------------------------------------------------------------

    def _under_test(self, ref: DeviceRef, ts: int) -> bool:
        windows = self._maint.get(ref.building)
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

    def _maint_end(self, building: str, window_id: str, at: int, out: list[AlertTransition]) -> None:
        windows = self._maint.get(building)
        window = windows.pop(window_id, None) if windows else None
        b = self._buildings.get(building)
        if window is None or b is None:
            return
        self._dirty.add(building)
        for key, live in list(b.alerts.items()):
            if not live.test:
                continue
            if window.floor is not None and live.floor != window.floor:
                continue
            if window.device is not None and live.device != window.device:
                continue
            if live.device is None:
                del b.alerts[key]
                out.append(self._transition("cleared", building, live, at, f"maintenance window {window.id} ended"))
                continue
            dev = b.space(DRILL if live.drill else REAL).get(live.device)
            cr = dev.plan.by_id.get(live.rule) if dev is not None else None
            st = dev.rs[cr.idx] if dev is not None and cr is not None else None
            if dev is None or cr is None or st is None or st.live is not live:
                del b.alerts[key]
                out.append(self._transition("cleared", building, live, at, f"maintenance window {window.id} ended"))
                continue
            still = st.csince is None and cr.kind not in (EVENT, COUNT, ABSENCE)
            value = st.value
            self._clear(b, dev, cr, st, at, f"maintenance window {window.id} ended", out)
            if still:
                # the condition is still there: re-arm it so it is raised for real after its `for`
                st.since = at
                st.value = value
                st.ev = [(at, value if value is not None else "")]
            dev.rs[cr.idx] = None if st.idle() else st
            self._rearm(b, dev)

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _transition(
        self,
        kind: str,
        building: str,
        live: Live,
        ts: int,
        reason: str,
        evidence: tuple[Evidence, ...] = (),
        *,
        grid: str | None = None,
    ) -> AlertTransition:
        if grid is None and live.device is not None:
            ref = self._registry.get(live.device)
            grid = ref.grid if ref is not None else None
        return AlertTransition(
            transition=kind,  # type: ignore[arg-type]
            key=live.key,
            rule=live.rule,
            severity=live.severity,
            building=building,
            floor=live.floor,
            device=live.device,
            ts_ms=ts,
            reason=reason,
            value=live.value,
            confirmed=live.confirmed,
            flapping=live.flapping,
            test=live.test,
            grid=grid,
            evidence=evidence,
            drill=live.drill,
        )

    def _building(self, building: str) -> BState:
        b = self._buildings.get(building)
        if b is None:
            b = self._buildings[building] = BState(building)
        return b

    def _device_state(self, b: BState, device: str, space: int, since: int) -> DevState | None:
        dev = b.space(space).get(device)
        if dev is not None:
            return dev
        ref = self._registry.get(device)
        if ref is None or ref.building != b.id:
            return None
        return self._new_device(b, ref, space, since)

    def _new_device(self, b: BState, ref: DeviceRef, space: int, ts: int) -> DevState:
        old = b.space(space).get(ref.device)
        if old is not None and old.ref.kind == ref.kind:
            return old
        if old is not None:
            self._drop_device(b, old)
        now = self._now if self._now is not None else ts
        dev = DevState(ref, self._plan(ref), space, now)
        b.space(space)[ref.device] = dev
        self._dirty.add(b.id)
        if b.alerts:
            # alerts seeded from the store before this device spoke again: adopt them, so they are not raised twice
            for cr in dev.plan.rules:
                live = b.alerts.get(alert_key(cr.id, ref.building, ref.floor, ref.device, drill=space == DRILL))
                if live is not None and live.device == ref.device:
                    st = dev.rs[cr.idx] = RState()
                    st.live = live
                    st.value = live.value
                    st.since = live.since if cr.kind == EVENT else None
        if space == REAL and dev.plan.absence is not None:
            self._arm(b, dev, now + dev.plan.absence.silent_ms)
        if b.alerts:
            self._rearm(b, dev)
        return dev

    def _drop_device(self, b: BState, dev: DevState) -> None:
        """A device changed kind (an unregistered one re-announcing itself): its old alerts go with it silently."""
        for st in dev.rs:
            if st is not None and st.live is not None:
                b.alerts.pop(st.live.key, None)

    def _adopt_registry(self, now: int) -> None:
        """At the first tick, every registered device starts its absence clock, heard from or not."""
        for ref in self._registry.values():
            b = self._building(ref.building)
            if ref.device not in b.devices:
                self._new_device(b, ref, REAL, now)
                self._dirty.add(ref.building)

    def _plan(self, ref: DeviceRef) -> Plan:
        heartbeat = self._rule_set.heartbeat_s(ref.device, ref.kind)
        if ref.device in self._named_devices:
            return self._resolve_plan(ref, heartbeat)
        shape = (
            ref.kind,
            ref.building if self._shape_building else "",
            ref.floor if self._shape_floor else None,
            ref.grid if self._shape_grid else None,
            heartbeat,
        )
        plan = self._plan_by_shape.get(shape)
        if plan is None:
            plan = self._plan_by_shape[shape] = self._resolve_plan(ref, heartbeat)
        return plan

    def _resolve_plan(self, ref: DeviceRef, heartbeat: int) -> Plan:
        chosen: list[tuple[int, RuleConfig]] = []
        signature: list[Any] = []
        for i, rule in enumerate(self._device_rules):
            if not rule.match.matches(
                kind=ref.kind, building=ref.building, floor=ref.floor, device=ref.device, grid=ref.grid
            ):
                continue
            applied = tuple(
                j
                for j, o in enumerate(rule.overrides)
                if o.applies(building=ref.building, floor=ref.floor, device=ref.device)
            )
            flap = self._flap_for(rule, ref)
            chosen.append((i, rule))
            signature.append((i, applied, flap))
        key = (tuple(signature), heartbeat if any(r.kind == "absence" for _, r in chosen) else 0)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        crules: list[CRule] = []
        for (_, rule), (_, _, flap) in zip(chosen, signature, strict=True):
            effective = _apply_overrides(rule, ref)
            if effective is None:
                continue
            crules.append(CRule(effective, idx=len(crules), heartbeat_s=heartbeat, flap=flap))
        plan = build_plan(crules)
        self._plans[key] = plan
        return plan

    def _flap_for(self, rule: RuleConfig, ref: DeviceRef) -> tuple[int, int, int] | None:
        if rule.kind not in ("threshold", "rate_of_rise", "state"):
            return None
        for f in self._flapping:
            if f.rules is not None and rule.id not in f.rules:
                continue
            if not f.match.matches(
                kind=ref.kind, building=ref.building, floor=ref.floor, device=ref.device, grid=ref.grid
            ):
                continue
            effective = _apply_overrides(f, ref)
            if effective is None:
                continue
            return (effective.changes, effective.window_ms or 0, effective.hold_ms)
        return None


def _apply_overrides(rule: RuleConfig, ref: DeviceRef) -> RuleConfig | None:
    """The rule as it applies to ``ref`` (None when an override disables it there)."""
    update: dict[str, Any] = {}
    for o in rule.overrides:
        if o.applies(building=ref.building, floor=ref.floor, device=ref.device):
            update.update(o.changes_set())
    effective = rule.model_copy(update=update) if update else rule
    return effective if effective.enabled else None


def _median3(a: float, b: float, c: float) -> float:
    if a > b:
        a, b = b, a
    if b > c:
        b = c
    return a if a > b else b
