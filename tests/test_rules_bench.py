"""bench/rules.py's machinery on a tiny district (no timing asserted: speed is measured in bench/, not in tests)."""

from __future__ import annotations

from bench import rules as bench_rules
from rules.engine import Engine
from rules.loader import DEFAULTS_PATH, read_rules_file
from rules.ruleset import RuleSet


def test_bench_district_goes_through_the_engine_and_raises_something() -> None:
    rule_set = RuleSet(rules=read_rules_file(DEFAULTS_PATH))
    registry = bench_rules.district(500)
    batch = bench_rules.readings(registry, 20_000)
    engine = Engine(rule_set, registry=registry)
    engine.tick(bench_rules.T0)
    bench_rules.run_engine(engine, batch)
    # 0.1 % of smoke samples are alarms: the bench exercises raising, not only the quiet path
    assert any(t.rule == "smoke-detector-alarm" for t in engine.active())
    rate, base, per_device, n = bench_rules.measure(rule_set, 500, 5_000, 1)
    assert rate > 0 and base > 0 and n == 5_000
    assert 0 < per_device < 100_000
