"""Deadlines: when a device's pending rules are next due, and the heap that wakes the engine then.

A device has at most one live entry in the heap, its earliest deadline (``DevState.due``); an entry superseded by an
earlier one stays in the heap and is skipped when it comes up.  Maintenance windows' ends share the heap, with
``MAINT`` where a device's space would be and the window id where its device id would be.
"""

from __future__ import annotations

import heapq

from rules.compiled import COUNT, EVENT, RATE, STATE, THRESHOLD, CRule
from rules.state import MAINT, REAL, DevState, RState
from rules.types import MaintenanceWindow

__all__ = ["Timers", "absence_due", "next_due", "offline_due", "rule_due"]

_LEVEL = frozenset((THRESHOLD, RATE, STATE))


class Timers:
    """The timer heap: ``(due, building, device or window id, space)``, earliest first."""

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[int, str, str, int]] = []

    def arm(self, building: str, dev: DevState, at: int) -> None:
        """Wake the device at ``at``, unless it is already armed for no later than that."""
        if dev.due is None or at < dev.due:
            dev.due = at
            heapq.heappush(self.heap, (at, building, dev.ref.device, dev.space))

    def arm_window(self, window: MaintenanceWindow) -> None:
        heapq.heappush(self.heap, (window.end_ms, window.building, window.id, MAINT))

    def behind(self, now: int | None) -> bool:
        """Something is due by ``now`` and still waits in the heap."""
        return bool(self.heap) and now is not None and self.heap[0][0] <= now


def rule_due(cr: CRule, st: RState) -> int | None:
    """When the rule's pending state next needs the clock: ``for`` elapsed, ``clear_after`` or the flapping hold
    over, the oldest counted raise expired.  None when it waits for nothing but input (absence: ``absence_due``)."""
    kind = cr.kind
    if kind in _LEVEL:  # first: the kinds most devices have state for (a heat detector's rate window)
        live = st.live
        if live is None:
            return st.since + cr.for_ms if st.since is not None else None
        if st.csince is not None:
            return st.csince + (cr.flap_hold_ms if live.flapping else cr.clear_after_ms)
        return None
    if kind == EVENT:
        if st.live is not None and cr.clear_after_ms and st.since is not None:
            return st.since + cr.clear_after_ms
        return None
    if kind == COUNT:
        return st.hist[0] + cr.window_ms if st.hist else None
    return None


def absence_due(dev: DevState, held: bool) -> int | None:
    """When the device's absence rule raises: the earlier of its silent and its ``offline`` deadline.  None when it
    has no absence rule, is a drill device, is already reported absent, or presence is ``held`` (no broker).
    (``held`` positional, as in ``next_due``: both run for every device a timer wakes.)"""
    cr = dev.plan.absence
    if cr is None or dev.space != REAL or held:
        return None
    st = dev.rs[cr.idx]
    if st is not None and st.live is not None:
        return None
    at = dev.last_seen + cr.silent_ms
    if dev.offline_since is not None:
        offline_at = offline_due(dev, cr)
        if offline_at is not None and offline_at <= at:
            return offline_at
    return at


def offline_due(dev: DevState, cr: CRule) -> int | None:
    """The absence rule's deadline for the device's ``offline`` status (None: it is not offline, or the rule does not
    look at status); ``absence_due`` is this one when it is no later than the silent one."""
    if dev.offline_since is None or cr.offline_ms is None:
        return None
    return dev.offline_since + cr.offline_ms


def next_due(dev: DevState, held: bool) -> int | None:
    """The device's earliest deadline, if it has one."""
    best: int | None = None
    for cr, st in zip(dev.plan.rules, dev.rs, strict=True):
        if st is not None:
            at = rule_due(cr, st)
            if at is not None and (best is None or at < best):
                best = at
    at = absence_due(dev, held)
    if at is not None and (best is None or at < best):
        best = at
    return best
