"""Build a :class:`RuleSet` from a firegrid config: the inline ``rules`` list, a ``rules_file``, or the shipped
``rules/defaults.yaml``; plus the heartbeat periods and configured maintenance windows the engine needs.

This module reads files (the core does not).  Every problem is reported as ``path: message``, with the path the
operator wrote (``rules[2].for: ...``, ``rules_file: /etc/firegrid/rules.yaml: rules[0].metric: ...``), by raising
:class:`RulesError`, a ``ConfigError``, so ``firegrid check-config`` prints it with the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from common.errors import ConfigError, validation_problems
from common.yamlio import read_yaml_file
from rules.model import _KIND_KEYS, ALERTING_KINDS, LEVEL_KINDS, TUNABLE_KEYS, RuleConfig, check_threshold
from rules.ruleset import RuleSet
from rules.types import DeviceKind, MaintenanceWindow

DEFAULTS_PATH = Path(__file__).with_name("defaults.yaml")

# The metrics of each device kind (docs/telemetry.md; gateway/ingest/contract.py enforces them on the wire).
_COMMON_METRICS = {"battery": "number", "rssi": "number", "tamper": "bool", "fault": "text"}
KIND_METRICS: dict[str, dict[str, str]] = {
    "smoke": {"obscuration": "number", "alarm": "bool", **_COMMON_METRICS},
    "heat": {"celsius": "number", **_COMMON_METRICS},
    "extinguisher": {"pressure_mpa": "number", "present": "bool", "obstructed": "bool", **_COMMON_METRICS},
    "call_point": dict(_COMMON_METRICS),
    "panel_point": {
        "fire_alarm": "bool",
        "part_fault": "bool",
        "supervisory": "bool",
        "power_fault": "bool",
        **_COMMON_METRICS,
    },
}
_ADAPTER: TypeAdapter[list[RuleConfig]] = TypeAdapter(list[RuleConfig])


class RulesError(ConfigError):
    """Rule configuration problems, one ``path: message`` each.  A ``ConfigError``: bad rules are a bad config, and
    whoever reports config problems reports these with them."""


def load_rule_set(config: Any) -> RuleSet:
    """The config's rule set; raises :class:`RulesError` listing every problem."""
    if config.rules is not None:
        rules = tuple(config.rules)
        problems = check_rules(rules, prefix="rules")
        source = "config"
    elif config.rules_file is not None:
        path = config.resolve_path(Path(config.rules_file))
        rules = read_rules_file(path, label=f"rules_file: {path}: ")
        problems = check_rules(rules, prefix=f"rules_file: {path}: rules")
        source = str(path)
    else:
        rules = read_rules_file(DEFAULTS_PATH, label="rules/defaults.yaml: ")
        problems = check_rules(rules, prefix="rules/defaults.yaml: rules")
        source = "defaults"
    if problems:
        raise RulesError(problems)
    return rule_set_for(rules, config, source=source)


def rule_set_for(rules: Sequence[RuleConfig], config: Any, *, source: str) -> RuleSet:
    """Attach what the rules need from the rest of the config: heartbeats and configured maintenance windows."""
    by_kind = {str(getattr(k, "value", k)): int(v) for k, v in config.presence.heartbeat_s.items()}
    by_device = {d.id: int(d.heartbeat_s) for d in config.devices if d.heartbeat_s is not None}
    return RuleSet(
        rules=tuple(rules),
        heartbeat_s_by_kind=by_kind,
        heartbeat_s_by_device=by_device,
        maintenance=tuple(maintenance_windows(rules)),
        source=source,
    )


def read_rules_file(path: Path, *, label: str | None = None) -> tuple[RuleConfig, ...]:
    """Parse a rules YAML file: a list of rules, or a mapping with a ``rules`` list.  Problems are prefixed with
    ``label`` (default ``"<path>: "``)."""
    label = f"{path}: " if label is None else label
    try:
        data = read_yaml_file(path, label=label)
    except ConfigError as exc:
        raise RulesError(exc.problems) from None
    if isinstance(data, dict) and set(data) == {"rules"}:
        data = data["rules"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise RulesError([f"{label}must be a list of rules (or a mapping with one key, 'rules')"])
    try:
        return tuple(_ADAPTER.validate_python(data))
    except ValidationError as exc:
        raise RulesError(validation_problems(exc, prefix=f"{label}rules")) from None


def check_rules(rules: Sequence[RuleConfig], *, prefix: str) -> list[str]:
    """Checks across rules and against the telemetry contract, each with the path of the offending key."""
    problems: list[str] = []
    by_id: dict[str, RuleConfig] = {}
    for i, rule in enumerate(rules):
        where = f"{prefix}[{i}]"
        if rule.id in by_id:
            problems.append(f"{where}.id: duplicate rule id {rule.id!r}")
        by_id[rule.id] = rule
    for i, rule in enumerate(rules):
        where = f"{prefix}[{i}]"
        if rule.kind in LEVEL_KINDS and rule.metric is not None:
            problems.extend(_check_metric(rule, where))
        for j, member in enumerate(rule.rules or ()):
            target = by_id.get(member)
            if target is None:
                problems.append(f"{where}.rules[{j}]: unknown rule {member!r}")
            elif rule.kind == "flapping" and target.kind not in LEVEL_KINDS:
                problems.append(f"{where}.rules[{j}]: flapping applies to threshold, rate_of_rise and state rules")
            elif rule.kind in ("correlate", "count") and (
                target.kind not in ALERTING_KINDS or target.kind in ("correlate", "count")
            ):
                problems.append(f"{where}.rules[{j}]: {rule.kind} watches device rules, not {target.kind!r}")
        allowed = _KIND_KEYS.get(rule.kind, set()) | {"enabled", "severity"}
        for j, override in enumerate(rule.overrides):
            changes = override.changes_set()
            wrong = [k for k in changes if k not in allowed]
            if wrong:
                names = ", ".join(k.removesuffix("_ms") for k in wrong)
                problems.append(f"{where}.overrides[{j}]: {names}: not used by kind {rule.kind!r}")
                continue
            if rule.kind == "threshold":
                merged = rule.model_copy(update=changes)
                given = [k for k in ("above", "below", "outside") if getattr(merged, k) is not None]
                try:
                    if len(given) != 1:
                        raise ValueError("a threshold needs exactly one of above, below, outside")
                    check_threshold(merged.above, merged.below, merged.outside, merged.clear_below, merged.clear_above)
                except ValueError as exc:
                    problems.append(f"{where}.overrides[{j}]: {exc}")
    return problems


def _check_metric(rule: RuleConfig, where: str) -> list[str]:
    kinds = [k.value for k in rule.match.kind] if rule.match.kind else [k.value for k in DeviceKind]
    metric = rule.metric or ""
    having = [k for k in kinds if metric in KIND_METRICS[k]]
    if not having:
        return [f"{where}.metric: no device kind {'/'.join(kinds)} reports {metric!r}"]
    if rule.match.kind and len(having) != len(kinds):
        missing = sorted(set(kinds) - set(having))
        return [f"{where}.metric: device kind {'/'.join(missing)} does not report {metric!r}"]
    mtype = KIND_METRICS[having[0]][metric]
    if rule.kind in ("threshold", "rate_of_rise") and mtype != "number":
        return [f"{where}.metric: {metric!r} is a {mtype}, a {rule.kind} needs a number (use kind: state)"]
    if rule.kind == "state" and mtype == "bool" and not isinstance(rule.equals, bool):
        return [f"{where}.equals: {metric!r} is true or false"]
    return []


def maintenance_windows(rules: Sequence[RuleConfig]) -> list[MaintenanceWindow]:
    """Configured ``maintenance``/``silence`` entries as engine windows (one per building, floor and device)."""
    windows: list[MaintenanceWindow] = []
    for rule in rules:
        if rule.kind not in ("maintenance", "silence") or not rule.enabled:
            continue
        assert rule.start is not None and rule.end is not None
        floors: list[int | None] = list(rule.match.floor) if rule.match.floor else [None]
        devices: list[str | None] = list(rule.match.devices) if rule.match.devices else [None]
        for building in rule.match.building or ():
            for floor in floors:
                for device in devices:
                    n = len(windows)
                    windows.append(
                        MaintenanceWindow(
                            id=f"{rule.id}#{n}" if n or len(floors) * len(devices) > 1 else rule.id,
                            building=building,
                            floor=floor,
                            device=device,
                            start_ms=rule.start,
                            end_ms=rule.end,
                            reason=rule.reason or rule.description or rule.kind,
                        )
                    )
    return windows


__all__ = [
    "DEFAULTS_PATH",
    "KIND_METRICS",
    "TUNABLE_KEYS",
    "RulesError",
    "check_rules",
    "load_rule_set",
    "read_rules_file",
    "rule_set_for",
]
