"""Timed, composable scenarios: ``NAME@TARGET[+OFFSET][/DURATION][,key=value...]`` or a YAML scenario file.

Targets: a device id (``yg01-sd-02a``), a building (``b07``: the scenario picks a fitting device), a floor
(``b07:3F``, ``b07:B1``) or ``*`` (every device, for ``disconnect``).  Offsets and durations: ``500ms``, ``30s``,
``2m``, ``1h``; the offset counts from the start of the simulation.

Each scenario also says what a deployment running the shipped default rules (``rules/defaults.yaml``) should raise
— its :class:`Expectation` list — which ``firegrid verify`` checks against the live alert stream.  What a scenario
is lives in :mod:`simulators.scenario_base`, the scenarios themselves in :mod:`simulators.scenario_kinds`; this
module reads the spec language and scenario files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from simulators.clock import DurationError, format_ms, parse_duration_ms
from simulators.model import Community, parse_floor
from simulators.scenario_base import Expectation, Scenario, ScenarioError, resolve_target
from simulators.scenario_kinds import SCENARIOS, Disconnect


def parse_spec(text: str, community: Community) -> Scenario:
    """``fire@b07:3F+30s``, ``extinguisher-removed@yg01-ex-01+10s/2m``, ``leak@yg01-ex-02,rate=0.05``."""
    head, *rest = text.strip().split(",")
    params: dict[str, str] = {}
    for item in rest:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ScenarioError(f"{text}: parameter {item!r} is not key=value")
        params[key.strip()] = value.strip()
    name, sep, target_part = head.partition("@")
    if not sep:
        raise ScenarioError(f"{text}: expected NAME@TARGET[+OFFSET][/DURATION]; names: {', '.join(SCENARIOS)}")
    duration_ms: int | None = None
    if "/" in target_part:
        target_part, duration = target_part.split("/", 1)
        duration_ms = _duration(text, duration)
    at_ms = 0
    if "+" in target_part:
        target_part, offset = target_part.split("+", 1)
        at_ms = _duration(text, offset)
    return build(
        name.strip(), target_part, at_ms=at_ms, duration_ms=duration_ms, params=params, spec=text, community=community
    )


def _duration(spec: str, text: str) -> int:
    try:
        return parse_duration_ms(text)
    except DurationError as exc:
        raise ScenarioError(f"{spec}: {exc}") from None


def build(
    name: str,
    target: str,
    *,
    at_ms: int,
    duration_ms: int | None,
    params: dict[str, str],
    spec: str,
    community: Community,
) -> Scenario:
    cls = SCENARIOS.get(name)
    if cls is None:
        raise ScenarioError(f"{spec}: unknown scenario {name!r}; one of {', '.join(SCENARIOS)}")
    scenario = cls(
        name=name,
        target=resolve_target(community, target),
        at_ms=at_ms,
        duration_ms=duration_ms,
        params=params,
        spec=spec,
    )
    if scenario.target.everything and cls is not Disconnect:
        raise ScenarioError(f"{spec}: only 'disconnect' can target every device")
    # Validate now, not mid-run: the target must have a fitting device (e.g. a floor with a smoke detector).
    if not scenario.target.everything:
        scenario.pick(community)
    scenario.expectations(community)
    return scenario


@dataclass(frozen=True)
class ScenarioFile:
    name: str
    scenarios: tuple[Scenario, ...]
    expectations: tuple[Expectation, ...] | None  # None: derive from the scenarios
    duration_ms: int | None


def load_file(path: str | Path, community: Community) -> ScenarioFile:
    """A YAML scenario file::

    name: floor-3-drill
    duration: 3m                      # optional run length
    scenarios:
      - fire@b07:3F+30s               # the short form, or
      - {type: cooking, target: yg01-sd-02a, at: 10s, duration: 2m, params: {peak: 5}}
    expect:                           # optional: replaces the derived expectations
      - {severity: fire, device: yg01-sd-02a, within: 30s}
      - {severity: fire, building: yg01, floor: 2, confirmed: true, absent: true}
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise ScenarioError(f"{path}: expected a mapping with a 'scenarios' list")
    unknown = set(data) - {"name", "duration", "scenarios", "expect"}
    if unknown:
        raise ScenarioError(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    scenarios: list[Scenario] = []
    for i, item in enumerate(data["scenarios"]):
        where = f"{path}: scenarios[{i}]"
        try:
            scenarios.append(_file_scenario(where, item, community))
        except ScenarioError as exc:
            raise ScenarioError(f"{where}: {exc}") from None
    expectations: list[Expectation] | None = None
    if data.get("expect") is not None:
        expectations = [_expectation(f"{path}: expect[{i}]", e, community) for i, e in enumerate(data["expect"])]
    duration = data.get("duration")
    return ScenarioFile(
        name=str(data.get("name") or path.stem),
        scenarios=tuple(scenarios),
        expectations=None if expectations is None else tuple(expectations),
        duration_ms=None if duration is None else _duration(str(path), str(duration)),
    )


def _file_scenario(where: str, item: Any, community: Community) -> Scenario:
    if isinstance(item, str):
        return parse_spec(item, community)
    if not isinstance(item, dict) or "type" not in item or "target" not in item:
        raise ScenarioError("expected a spec string or a mapping with type and target")
    extra = set(item) - {"type", "target", "at", "duration", "params"}
    if extra:
        raise ScenarioError(f"unknown keys {', '.join(sorted(extra))}")
    duration = item.get("duration")
    return build(
        str(item["type"]),
        str(item["target"]),
        at_ms=_duration(where, str(item.get("at", "0s"))),
        duration_ms=None if duration is None else _duration(where, str(duration)),
        params={str(k): str(v) for k, v in (item.get("params") or {}).items()},
        spec=f"{item['type']}@{item['target']}",
        community=community,
    )


_EXPECT_KEYS = {
    "label",
    "severity",
    "building",
    "floor",
    "device",
    "confirmed",
    "after",
    "within",
    "absent",
    "required",
}


def _expectation(where: str, item: Any, community: Community) -> Expectation:
    if not isinstance(item, dict) or "severity" not in item:
        raise ScenarioError(f"{where}: expected a mapping with at least 'severity'")
    extra = set(item) - _EXPECT_KEYS
    if extra:
        raise ScenarioError(f"{where}: unknown keys {', '.join(sorted(extra))}")
    severity = str(item["severity"]).lower()
    if severity not in ("fire", "supervisory", "trouble", "warning"):
        raise ScenarioError(f"{where}: severity must be fire, supervisory, trouble or warning")
    device = item.get("device")
    building = item.get("building")
    floor = item.get("floor")
    if device is not None:
        spec = community.device(str(device))
        if spec is None:
            raise ScenarioError(f"{where}: unknown device {device!r}")
        building = building or spec.building
        floor = spec.floor if floor is None else floor
    if building is None:
        raise ScenarioError(f"{where}: give a device or a building")
    if isinstance(floor, str):
        floor = parse_floor(floor)
    return Expectation(
        label=str(item.get("label") or "from file"),
        severity=severity,
        building=str(building),
        floor=floor,
        device=None if device is None else str(device),
        confirmed=item.get("confirmed"),
        after_ms=_duration(where, str(item.get("after", "0s"))),
        within_ms=_duration(where, str(item.get("within", "30s"))),
        absent=bool(item.get("absent", False)),
        required=bool(item.get("required", True)),
        any_device=device is None,
    )


HELP: dict[str, str] = {
    "fire": "fire@b07:3F+30s[,spread=15s]  growing fire: smoke, then the floor's detectors and heat, then upstairs",
    "cooking": "cooking@DEVICE+10s[/2m][,peak=4.5]  one detector's smoke, no heat: an unconfirmed alarm",
    "callpoint": "callpoint@DEVICE+5s[/1m]  call point pressed (reset after the duration); alias call_point",
    "panel-alarm": "panel-alarm@DEVICE+5s[/1m]  a fire alarm panel's point in fire alarm (panel_point, via a UITD)",
    "extinguisher-removed": "extinguisher-removed@DEVICE[/90s]  off its bracket, back after; alias removed",
    "leak": "leak@DEVICE[,rate=0.02]  pressure falls RATE MPa/min",
    "silent": "silent@DEVICE+30s[/20m]  sends nothing (for good without a duration)",
    "flapping": "flapping@DEVICE[/6m][,high=10s,low=40s]  in alarm HIGH, clear LOW, again and again",
    "low-battery": "low-battery@DEVICE[,level=15]  battery at LEVEL %",
    "skew": "skew@DEVICE[,skew=10m]  clock ahead (or -5m behind)",
    "malformed": "malformed@DEVICE[,only=not_json+oversize]  one payload per contract rejection reason",
    "disconnect": "disconnect@b07|DEVICE|*+60s[/60s]  broker lost: will 'offline', buffer, 'online' + batch",
}


def describe_all() -> str:
    return "\n".join(f"  {line}" for line in HELP.values())


__all__ = ["Expectation", "Scenario", "ScenarioError", "ScenarioFile", "format_ms", "load_file", "parse_spec"]
