"""Rule configuration: the shipped defaults, the YAML keys of every kind, and errors that name the exact path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, parse_config
from gateway.tools.cli import main
from rules.engine import Engine
from rules.loader import DEFAULTS_PATH, load_rule_set
from rules.types import DeviceRef, MaintenanceWindow

BASE: dict[str, Any] = {
    "buildings": [{"id": "b1", "name": "Building 1", "grid": "g1", "floors": 5}],
    "devices": [
        {"id": "s1", "building": "b1", "kind": "smoke", "floor": 1},
        {"id": "h1", "building": "b1", "kind": "heat", "floor": 1, "heartbeat_s": 60},
    ],
    "presence": {"heartbeat_s": {"smoke": 120, "heat": 300, "extinguisher": 600, "call_point": 900}},
}


def config_with(**extra: Any) -> Any:
    return parse_config({**BASE, **extra})


def problems_of(rules: list[dict[str, Any]]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_rule_set(config_with(rules=rules))
    return info.value.problems


def test_defaults_are_used_when_the_config_names_no_rules() -> None:
    rule_set = load_rule_set(config_with())
    ids = {r.id for r in rule_set.rules}
    assert {"smoke-obscuration", "heat-rate-of-rise", "call-point-pressed", "fire-confirmed", "device-absent"} <= ids
    assert rule_set.source == "defaults"
    assert rule_set.heartbeat_s("s1", "smoke") == 120 and rule_set.heartbeat_s("h1", "heat") == 60
    by_id = {r.id: r for r in rule_set.rules}
    # the shipped numbers, pinned so that a change to defaults.yaml is a conscious one
    assert (by_id["smoke-obscuration"].above, by_id["smoke-obscuration"].for_ms) == (3.0, 5000)
    assert by_id["smoke-obscuration"].clear_below == 1.5
    assert by_id["heat-fixed"].above == 57.0 and by_id["heat-rate-of-rise"].rate_per_min == 8.3
    assert (by_id["fire-confirmed"].window_ms, by_id["fire-confirmed"].scope) == (120_000, "floor")
    assert by_id["extinguisher-missing"].for_ms == 30_000 and by_id["extinguisher-obstructed"].for_ms == 60_000
    assert by_id["extinguisher-pressure"].outside == (1.0, 1.4) and by_id["extinguisher-pressure"].for_ms == 60_000
    assert by_id["battery-low"].below == 20
    assert by_id["device-absent"].heartbeat_factor == 2 and by_id["device-absent"].offline_for_ms == 30_000


def test_an_empty_rules_list_means_no_rules() -> None:
    assert load_rule_set(config_with(rules=[])).rules == ()


def test_the_example_community_validates(community_config_path: Path) -> None:
    assert main(["check-config", str(community_config_path)]) == 0


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            [
                {
                    "id": "a",
                    "kind": "threshold",
                    "severity": "fire",
                    "metric": "obscuration",
                    "above": 3,
                    "for": "5 parsecs",
                }
            ],
            "rules[0].for: not a duration",
        ),
        (
            [{"id": "a", "kind": "threshold", "severity": "fire", "metric": "obscuration", "abov": 3}],
            "rules[0].abov: unknown key",
        ),
        (
            [{"id": "a", "kind": "threshold", "severity": "fire", "metric": "obscuration"}],
            "rules[0]: a threshold needs",
        ),
        ([{"id": "a", "kind": "thresold", "severity": "fire"}], "rules[0].kind: Input should be"),
        (
            [{"id": "a", "kind": "event", "severity": "fire", "event": "pressed", "above": 3}],
            "rules[0]: above: not used",
        ),
        ([{"id": "a", "kind": "event", "severity": "loud", "event": "pressed"}], "rules[0].severity: Input should be"),
        (
            [
                {
                    "id": "a",
                    "kind": "threshold",
                    "severity": "fire",
                    "metric": "obscuration",
                    "above": 3,
                    "clear_below": 4,
                }
            ],
            "rules[0]: clear_below goes with above",
        ),
        (
            [
                {
                    "id": "a",
                    "kind": "state",
                    "severity": "fire",
                    "metric": "alarm",
                    "equals": True,
                    "match": {"kind": "heat"},
                }
            ],
            "rules[0].metric: no device kind heat reports 'alarm'",
        ),
        (
            [{"id": "a", "kind": "threshold", "severity": "fire", "metric": "alarm", "above": 1}],
            "rules[0].metric: 'alarm' is a bool",
        ),
        (
            [
                {"id": "a", "kind": "event", "severity": "fire", "event": "pressed"},
                {"id": "c", "kind": "correlate", "rules": ["a", "zz"], "window": "2m"},
            ],
            "rules[1].rules[1]: unknown rule 'zz'",
        ),
        (
            [
                {"id": "a", "kind": "event", "severity": "fire", "event": "pressed"},
                {"id": "a", "kind": "event", "severity": "fire", "event": "fault"},
            ],
            "rules[1].id: duplicate rule id 'a'",
        ),
        (
            [
                {
                    "id": "a",
                    "kind": "threshold",
                    "severity": "fire",
                    "metric": "obscuration",
                    "above": 3,
                    "overrides": [{"building": "b1", "rate_per_min": 3}],
                }
            ],
            "rules[0].overrides[0]: rate_per_min: not used by kind 'threshold'",
        ),
        (
            [{"id": "m", "kind": "maintenance", "match": {"building": "b1"}, "start": 100, "end": 50}],
            "rules[0]: end must be after start",
        ),
        ([{"id": "bad id!", "kind": "event", "severity": "fire", "event": "pressed"}], "rules[0].id: String should"),
    ],
)
def test_rule_errors_name_the_path(rules: list[dict[str, Any]], expected: str) -> None:
    found = problems_of(rules)  # model errors surface when the config is parsed, cross-rule ones in the loader
    assert any(p.startswith(expected) for p in found), found


def _write(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def test_check_config_prints_rule_problems_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(
        tmp_path / "c.yaml",
        {
            **BASE,
            "rules": [
                {"id": "a", "kind": "event", "severity": "fire", "event": "pressed"},
                {"id": "b", "kind": "event", "severity": "fire", "event": "pressed"},
                {"id": "c", "kind": "threshold", "severity": "fire", "metric": "celsius", "above": 57, "for": "x"},
            ],
        },
    )
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "rules[2].for: not a duration: 'x'" in err


def test_rules_file_errors_name_the_file_and_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules_file = _write(
        tmp_path / "rules.yaml", [{"id": "x", "kind": "state", "severity": "fire", "metric": "nope", "equals": 1}]
    )
    cfg = _write(tmp_path / "c.yaml", {**BASE, "rules_file": "rules.yaml"})
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"rules_file: {rules_file}: rules[0].metric:" in err
    (tmp_path / "rules.yaml").write_text("- {id: x, kind: [", encoding="utf-8")
    assert main(["check-config", str(cfg)]) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_rules_file_is_loaded_relative_to_the_config(tmp_path: Path) -> None:
    _write(tmp_path / "rules.yaml", {"rules": [{"id": "p", "kind": "event", "severity": "fire", "event": "pressed"}]})
    config = parse_config({**BASE, "rules_file": "rules.yaml"}, base_dir=tmp_path)
    rule_set = load_rule_set(config)
    assert [r.id for r in rule_set.rules] == ["p"]


def test_configured_maintenance_windows_reach_the_engine() -> None:
    config = config_with(
        rules=[
            {"id": "p", "kind": "threshold", "severity": "fire", "metric": "obscuration", "above": 3},
            {
                "id": "drill-week",
                "kind": "maintenance",
                "match": {"building": "b1", "floor": [1, 2]},
                "start": "2027-01-01T00:00:00+08:00",
                "end": "2027-01-02T00:00:00+08:00",
                "reason": "annual detector test",
            },
        ]
    )
    rule_set = load_rule_set(config)
    assert [(w.building, w.floor) for w in rule_set.maintenance] == [("b1", 1), ("b1", 2)]
    engine = Engine(rule_set, registry={})
    assert all(isinstance(w, MaintenanceWindow) for w in engine.maintenance())
    start = rule_set.maintenance[0].start_ms
    from rules.types import Reading

    s1 = DeviceRef("b1", "s1", "smoke", 1, "g1")
    [raised] = engine.process(Reading(s1, start + 1000, {"obscuration": 9}))
    assert raised.test is True


def test_environment_cannot_smuggle_untyped_rules() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "rules": [{"id": "a", "kind": "event", "severity": "fire", "event": "pressed", "x": 1}]})
    assert info.value.problems == ["rules[0].x: unknown key (not allowed here; check the spelling)"]


def test_defaults_file_is_packaged_next_to_the_code() -> None:
    assert DEFAULTS_PATH.is_file() and DEFAULTS_PATH.parent.name == "rules"


def test_the_rules_package_imports_nothing_of_firegrid_but_common() -> None:
    """The engine and its loader stand alone (the gateway imports them, never the other way round): loading every
    module of ``rules`` and reporting a bad rules file pull in no other firegrid package, and the error is still a
    ``ConfigError``, which every command reports."""
    import subprocess
    import sys

    code = (
        "import pkgutil, importlib, sys, rules\n"
        "for m in pkgutil.iter_modules(rules.__path__): importlib.import_module('rules.' + m.name)\n"
        "from common.errors import ConfigError\n"
        "from rules.loader import RulesError\n"
        "assert issubclass(RulesError, ConfigError)\n"
        "from types import SimpleNamespace\n"
        "from rules.loader import load_rule_set\n"
        "config = SimpleNamespace(rules=None, rules_file='/nonexistent.yaml', resolve_path=lambda p: p)\n"
        "try:\n"
        "    load_rule_set(config)\n"
        "except RulesError as exc:\n"
        "    assert exc.problems[0].startswith('rules_file: /nonexistent.yaml: cannot read'), exc.problems\n"
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'gateway', 'alerts', 'simulators', 'bench'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
