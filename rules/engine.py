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

This module holds the inputs and the rule mechanics (pending, raise, clear, flapping, count); the rest is composed
in: ``plans`` (which rules apply to a device), ``state`` (per building, device and rule), ``timers`` (deadlines and
the heap that wakes the engine), ``correlation`` (rules over a building's active alerts), ``maintenance`` (what is
under test), ``rate`` (rise per minute) and ``snapshot`` (a building's state as bytes).
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Iterable, Mapping

from rules.compiled import ABSENCE, COUNT, EVENT, RATE, CRule
from rules.correlation import Correlator
from rules.maintenance import Maintenance, covers
from rules.plans import Planner
from rules.rate import rise_per_minute
from rules.ruleset import RuleSet
from rules.snapshot import SnapshotError, decode, encode
from rules.state import DRILL, EVIDENCE_MAX, MAINT, REAL, BState, DevState, Live, RState, Transitions, alert_key
from rules.timers import Timers, absence_due, next_due, offline_due, rule_due
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
ALARM_EVENT = "alarm"  # EventType.ALARM: a detector entered alarm (the fast lane)
ALARM_METRIC = "alarm"  # the metric that carries a detector's own alarm decision in telemetry


def _sort(out: list[AlertTransition]) -> list[AlertTransition]:
    if len(out) > 1:
        # fire first; then by time; then by key, so the order never depends on timer-heap history (a restored
        # engine emits exactly what an uninterrupted one would).  Stable: one key's own sequence is kept.
        out.sort(key=lambda t: (-t.severity, t.ts_ms, t.key))
    return out


class Engine:
    """The rules engine.  Not thread-safe: the gateway serialises calls (``runtime.engine_lock``)."""

    def __init__(
        self, rule_set: RuleSet, *, registry: Mapping[str, DeviceRef], owned: Iterable[str] | None = None
    ) -> None:
        """``owned``: the buildings judged, when ownership moves at run time (cluster mode: :meth:`adopt`,
        :meth:`release`); ``None``: every building it hears of (a single gateway, a static ``mqtt.buildings``)."""
        self._owned: set[str] | None = None if owned is None else set(owned)
        self._rule_set = rule_set
        self._registry = registry
        self._transition = Transitions(registry)
        self._planner = Planner(rule_set)
        correlates = [r for r in rule_set.rules if r.enabled and r.kind == "correlate"]
        self._correlator = Correlator(correlates, transition=self._transition)
        self._presence_held_since: int | None = None
        self._buildings: dict[str, BState] = {}
        self._dirty: set[str] = set()
        self._timers = Timers()
        self._now: int | None = None  # engine clock: the latest tick
        self._maint = Maintenance()
        for window in rule_set.maintenance:
            if self.owns(window.building):
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
                if self._owned is not None and ref.building not in self._owned:
                    return out  # not ours (any more): another gateway judges it
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
            mark = dev.mark
            if mark is not None and ts <= mark:
                return _sort(out)  # overtaken by the device's alarm event (the fast lane): stored, never judged
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
        heap = self._timers.heap  # popped here rather than through a method: one call less per due timer
        left = limit if limit is not None else -1
        while heap and heap[0][0] <= now_ms and left != 0:
            left -= 1
            due, building, device, space = heapq.heappop(heap)
            if space == MAINT:
                window = self._maint.get(building, device)
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
                    self._timers.arm(building, dev, at)
                    continue
            self._dirty.add(building)
            self._due(b, dev, now_ms, out)
            self._rearm(b, dev)
        return _sort(out)

    def owns(self, building: str) -> bool:
        """Whether this engine judges the building (always, unless it was built with ``owned``)."""
        return self._owned is None or building in self._owned

    def adopt(self, building: str, *, snapshot: bytes | None, active: Iterable[ActiveAlert | AlertTransition]) -> None:
        """Take a building over (cluster mode: its partition's lease was acquired): its state becomes the last
        owner's ``snapshot`` (``None``, or one that does not decode: afresh) with the ``active`` alerts the store holds
        open, so nothing raised is raised again; its configured maintenance windows are installed; and, once the
        clock runs, each registered device the snapshot does not know starts its absence clock now."""
        if self._owned is not None:
            self._owned.add(building)
        self._forget(building)
        if snapshot is not None:
            with contextlib.suppress(SnapshotError):
                self.restore(building, snapshot)
        self.seed_active(a for a in active if a.building == building)
        for window in self._rule_set.maintenance:
            if window.building == building and self._maint.get(building, window.id) is None:
                self._install_window(window)
        if self._now is not None:
            b = self._building(building)
            for ref in self._registry.values():
                if ref.building == building and ref.device not in b.devices:
                    self._new_device(b, ref, REAL, self._now)
        self._dirty.add(building)

    def release(self, building: str) -> None:
        """Let a building go (its lease was lost or handed over): its state, windows and pending snapshot are dropped
        and later inputs for it ignored; its timers go stale (``tick`` skips superseded deadlines).  The new owner
        carries on from the store's last snapshot.  Only for an engine built with ``owned``."""
        if self._owned is None:
            raise ValueError("release() needs an engine built with owned=...: this one judges every building")
        self._owned.discard(building)
        self._forget(building)

    def _forget(self, building: str) -> None:
        self._buildings.pop(building, None)
        self._dirty.discard(building)
        self._maint.drop(building)

    def behind(self) -> bool:
        """Timers due by the engine clock are still waiting: a ``tick`` with a ``limit`` stopped short of them."""
        return self._timers.behind(self._now)

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
        """Put a device, floor or building under test.  Returns transitions if the window is already over.  A
        building this engine does not own is left to its owner (nothing is installed)."""
        if not self.owns(window.building):
            return []
        self._install_window(window)
        if self._now is not None and window.end_ms <= self._now:
            return self.tick(self._now)
        return []

    def _install_window(self, window: MaintenanceWindow) -> None:
        self._maint.add(window)
        self._dirty.add(window.building)
        self._timers.arm_window(window)

    def clear_maintenance(self, window_id: str, *, now_ms: int | None = None) -> list[AlertTransition]:
        """End a window early (at ``now_ms``, default the engine clock): its test alerts are cleared and the rules
        re-armed, so a condition still present is raised for real (at once, or after its ``for``, on ``tick``)."""
        out: list[AlertTransition] = []
        window = self._maint.find(window_id)
        if window is not None:
            now = now_ms if now_ms is not None else self._now if self._now is not None else window.start_ms
            self._maint_end(window.building, window_id, max(now, window.start_ms), out)
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
        return self._maint.all()

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
        return encode(b if b is not None else BState(building), windows=self._maint.of(building))

    def restore(self, building: str, data: bytes) -> None:
        """Replace the building's state with a snapshot.  Rules that no longer exist are dropped.  Raises
        ``SnapshotError`` (and changes nothing) when the data is not a snapshot of this building."""
        b, windows = decode(building, data, plan=self._planner.plan)
        self._buildings[building] = b
        for window in windows:
            # installed without ticking: a window that ended meanwhile is closed by the next tick
            self._install_window(window)
        for states in (b.devices, b.drills):
            for dev in states.values():
                self._rearm(b, dev)

    # --- inputs -----------------------------------------------------------------------------------------------

    def _event(self, e: DeviceEvent, out: list[AlertTransition]) -> None:
        ref = e.ref
        b = self._buildings.get(ref.building) or self._claim(ref.building)
        if b is None:
            return  # not ours (any more): another gateway judges it
        space = DRILL if e.drill else REAL
        dev = b.space(space).get(ref.device)
        if dev is None or (dev.ref is not ref and dev.ref.kind != ref.kind):
            dev = self._new_device(b, ref, space, e.ts_ms)
        self._dirty.add(b.id)
        self._seen(b, dev, e.ts_ms, out)
        ts = e.ts_ms
        if e.type == ALARM_EVENT:
            self._alarm_event(e, dev, out)
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
                self._timers.arm(b.id, dev, st.since + cr.clear_after_ms)

    def _alarm_event(self, e: DeviceEvent, dev: DevState, out: list[AlertTransition]) -> None:
        """A detector's ``alarm`` event is its own alarm decision (``alarm: true``) arriving ahead of its telemetry:
        judged as that reading, then the device's watermark moves to it so that the telemetry it overtook is not
        judged after it.  A kind without an ``alarm`` metric is judged by ``event: alarm`` rules only (below), and
        gets no watermark: nothing of its level rules was decided by the event, so the telemetry it overtook (a heat
        detector's sample over its threshold) must still be judged."""
        if ALARM_METRIC not in dev.plan.quiet or (dev.mark is not None and e.ts_ms <= dev.mark):
            return
        out.extend(self.process(Reading(e.ref, e.ts_ms, {ALARM_METRIC: True}, None, e.drill)))
        dev.mark = e.ts_ms

    def _status(self, s: StatusChange, out: list[AlertTransition]) -> None:
        ref = s.ref
        b = self._buildings.get(ref.building) or self._claim(ref.building)
        if b is None:
            return  # not ours (any more): another gateway judges it
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
                self._timers.arm(b.id, dev, s.ts_ms + cr.offline_ms)

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
                    self._timers.arm(b.id, dev, dev.last_seen + cr.silent_ms)  # watch for the next silence

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
            rate = rise_per_minute(cr, st, value, ts)
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
                self._timers.arm(b.id, dev, st.since + cr.for_ms)
            return
        if clear:
            if st.csince is None:
                st.csince = ts
            wait = cr.flap_hold_ms if st.live.flapping else cr.clear_after_ms
            if ts - st.csince >= wait:
                self._try_clear(b, dev, cr, st, ts, out)
            else:
                self._timers.arm(b.id, dev, st.csince + wait)
        else:
            st.csince = None

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
            test=self._maint.under_test(ref, ts),
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
        self._correlator.raised(b, dev, cr.id, ts, out, position=position)

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
                self._timers.arm(b.id, dev, (st.csince or ts) + cr.flap_hold_ms)
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
        self._correlator.cleared(b, dev, cr.id, ts, out)

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
        self._timers.arm(b.id, dev, hist[0] + cr.window_ms)

    # --- timers -----------------------------------------------------------------------------------------------

    def _rearm(self, b: BState, dev: DevState) -> None:
        """Arm the device's earliest pending deadline (``Timers.arm`` keeps the earlier of it and what is armed)."""
        nxt = next_due(dev, self._presence_held_since is not None)
        if nxt is not None:
            self._timers.arm(b.id, dev, nxt)

    def _due(self, b: BState, dev: DevState, now: int, out: list[AlertTransition]) -> None:
        """Fire every timer of one device that is due at ``now``."""
        for cr, st in zip(dev.plan.rules, dev.rs, strict=True):
            if st is None:
                continue
            kind = cr.kind
            if kind == ABSENCE:
                continue
            if kind == COUNT:
                if st.hist:
                    self._count_due(b, dev, cr, st, now, out)
            else:
                at = rule_due(cr, st)
                if at is not None and at <= now:
                    if kind == EVENT:
                        reason = f"{cr.label}: not repeated for {cr.clear_after_ms // 1000} s"
                        self._clear(b, dev, cr, st, at, reason, out)
                    elif st.live is None:
                        assert st.value is not None
                        self._raise(b, dev, cr, st, at, self._reason(cr, st.value), cr.metric, out)
                    else:
                        self._try_clear(b, dev, cr, st, at, out)
            if st.idle():
                dev.rs[cr.idx] = None
        at = absence_due(dev, self._presence_held_since is not None)
        if at is not None and at <= now:
            acr = dev.plan.absence
            assert acr is not None
            if at == offline_due(dev, acr):  # the offline deadline wins a tie with the silent one
                reason = f"{acr.label}: status offline for {acr.offline_ms // 1000} s"  # type: ignore[operator]
                self._raise_absence(b, dev, acr, at, "offline", reason, out)
            else:
                reason = f"{acr.label}: silent for {acr.silent_ms // 1000} s"
                self._raise_absence(b, dev, acr, at, "silent", reason, out)

    def _count_due(self, b: BState, dev: DevState, cr: CRule, st: RState, now: int, out: list[AlertTransition]) -> None:
        """Counted raises expire one window after they happened; the alert clears when fewer than ``count`` are left."""
        hist = st.hist
        assert hist is not None
        if st.live is not None and len(hist) >= cr.count:
            # the moment the count fell below `count`: when the raise that kept it there expired
            at = hist[len(hist) - cr.count] + cr.window_ms
            if at <= now:
                reason = f"{cr.label}: fewer than {cr.count} within {cr.window_ms // 1000} s"
                self._clear(b, dev, cr, st, at, reason, out)
        st.hist = [t for t in hist if t + cr.window_ms > now]

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

    def _maint_end(self, building: str, window_id: str, at: int, out: list[AlertTransition]) -> None:
        window = self._maint.pop(building, window_id)
        b = self._buildings.get(building)
        if window is None or b is None:
            return
        self._dirty.add(building)
        reason = f"maintenance window {window.id} ended"
        for key, live in list(b.alerts.items()):
            if not live.test or not covers(window, live):
                continue
            dev = b.space(DRILL if live.drill else REAL).get(live.device) if live.device is not None else None
            cr = dev.plan.by_id.get(live.rule) if dev is not None else None
            st = dev.rs[cr.idx] if dev is not None and cr is not None else None
            if dev is None or cr is None or st is None or st.live is not live:
                # a scope alert, or one the engine holds no rule state for: nothing to re-arm
                del b.alerts[key]
                out.append(self._transition("cleared", building, live, at, reason))
                continue
            still = st.csince is None and cr.kind not in (EVENT, COUNT, ABSENCE)
            value = st.value
            self._clear(b, dev, cr, st, at, reason, out)
            if still:
                # the condition is still there: re-arm it so it is raised for real after its `for`
                st.since = at
                st.value = value
                st.ev = [(at, value if value is not None else "")]
            dev.rs[cr.idx] = None if st.idle() else st
            self._rearm(b, dev)

    # --- plumbing ---------------------------------------------------------------------------------------------

    def _claim(self, building: str) -> BState | None:
        if self._owned is not None and building not in self._owned:
            return None
        return self._building(building)  # None above: not ours, another gateway's engine judges it

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
        dev = DevState(ref, self._planner.plan(ref), space, now)
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
            self._timers.arm(b.id, dev, now + dev.plan.absence.silent_ms)
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
            if self._owned is not None and ref.building not in self._owned:
                continue
            b = self._building(ref.building)
            if ref.device not in b.devices:
                self._new_device(b, ref, REAL, now)
                self._dirty.add(ref.building)
