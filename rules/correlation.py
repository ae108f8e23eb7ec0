"""Correlation: ``correlate`` rules, which raise a floor- or building-scope alert when enough devices of a scope are
in alarm together, and confirm every fire alert in it.

They look at the building's active alerts, not at readings, so they run when a member rule raises or clears.
"""

from __future__ import annotations

from dataclasses import replace

from rules.compiled import CRule
from rules.model import RuleConfig
from rules.plans import apply_overrides, matches
from rules.state import DRILL, EVIDENCE_MAX, BState, DevState, Live, Transitions, alert_key
from rules.types import AlertTransition, DeviceRef, Evidence, Severity

__all__ = ["Correlator"]

# Devices resolved per correlate rule are cached up to this many (device, rule) pairs; past it, each is resolved
# again when a member raises or clears, which is rare next to the memory a district-wide cache would keep.
_CACHE_MAX = 100_000


class Correlator:
    """The rule set's ``correlate`` rules, resolved per device on first use."""

    __slots__ = ("_by_member", "_cache", "_rules", "_transition")

    def __init__(self, rules: list[RuleConfig], *, transition: Transitions) -> None:
        self._rules = rules
        self._transition = transition
        self._by_member: dict[str, list[int]] = {}
        for ci, corr in enumerate(rules):
            for member in corr.rules or ():
                self._by_member.setdefault(member, []).append(ci)
        self._cache: dict[tuple[int, str, int | None, str, str, str | None], CRule | None] = {}

    def raised(
        self, b: BState, dev: DevState, rule_id: str, ts: int, out: list[AlertTransition], *, position: int
    ) -> None:
        """A device rule raised (its transition is ``out[position]``): raise or confirm what correlates with it."""
        for ci in self._by_member.get(rule_id, ()):
            self._correlate(b, dev, ci, ts, out, position)

    def cleared(self, b: BState, dev: DevState, rule_id: str, ts: int, out: list[AlertTransition]) -> None:
        """A device rule cleared: clear a correlated alert none of whose members is in alarm any more."""
        for ci in self._by_member.get(rule_id, ()):
            self._uncorrelate(b, dev, ci, ts, out)

    def _rule(self, ci: int, ref: DeviceRef) -> CRule | None:
        key = (ci, ref.building, ref.floor, ref.device, ref.kind, ref.grid)
        if key in self._cache:
            return self._cache[key]
        rule = self._rules[ci]
        found: CRule | None = None
        if matches(rule, ref):
            effective = apply_overrides(rule, ref)
            if effective is not None:
                found = CRule(effective, idx=-1, heartbeat_s=0, flap=None)
        if len(self._cache) < _CACHE_MAX:
            self._cache[key] = found
        return found

    def _scope(self, b: BState, dev: DevState, ci: int) -> tuple[CRule, bool, int | None, str] | None:
        """The correlate rule as it applies to the device, with its scope: drill or not, the floor (None: the whole
        building), and the key of the scope's correlated alert."""
        cr = self._rule(ci, dev.ref)
        if cr is None:
            return None
        drill = dev.space == DRILL
        floor = dev.ref.floor if cr.scope_floor else None
        return cr, drill, floor, alert_key(cr.id, b.id, floor, None, drill=drill)

    def _correlate(self, b: BState, dev: DevState, ci: int, ts: int, out: list[AlertTransition], position: int) -> None:
        scope = self._scope(b, dev, ci)
        if scope is None:
            return
        cr, drill, floor, skey = scope
        members = [
            live
            for live in b.alerts.values()
            if live.rule in cr.members
            and live.drill == drill
            and live.device is not None
            and (floor is None or live.floor == floor)
        ]
        where = f"floor {floor}" if floor is not None else "the building"
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
                    # the raise that brought it here is still in this batch: confirm it there, not in an update
                    out[position] = replace(out[position], confirmed=True)
                else:
                    reason = f"{cr.label}: a second device is in alarm on {where}"
                    out.append(self._transition("updated", b.id, m, ts, reason, grid=dev.ref.grid))

    def _uncorrelate(self, b: BState, dev: DevState, ci: int, ts: int, out: list[AlertTransition]) -> None:
        scope = self._scope(b, dev, ci)
        if scope is None:
            return
        cr, drill, floor, skey = scope
        live = b.alerts.get(skey)
        if live is None:
            return
        for m in b.alerts.values():
            if m.rule in cr.members and m.drill == drill and (floor is None or m.floor == floor):
                return  # a member is still in alarm: the confirmed fire stays
        del b.alerts[skey]
        out.append(self._transition("cleared", b.id, live, ts, f"{cr.label}: no detector in alarm any more"))
