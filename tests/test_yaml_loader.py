"""``common.yamlio.load_yaml``: what ``yaml.safe_load`` returns and raises, built from libyaml's events (with
``yaml.safe_load`` a 100,000-device config took over a minute to start and kept 600 MiB).  Every config and rules
file goes through it."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.yamlio import _stream_build, load_yaml
from gateway.config import ConfigError, load_config
from rules.loader import RulesError, read_rules_file

ROOT = Path(__file__).resolve().parent.parent

EDGE_CASES = [
    "",
    "---\n",
    "a: 1",
    "- 1\n- 2",
    "a: ~\nb: yes\nc: 0x1f\nd: .inf\ne: 1_000\nf: '007'\ng: 0o17\nh: 1e3\ni: 1.0e3\nj: -.5\nk: off",
    "1: a\n2.5: b\nnull: c\ntrue: d\n2001-12-14: e",
    "a: 2001-12-14t21:59:43.10-05:00\nb: 2002-12-14",
    "a: !!binary aGVsbG8=\nb: !!str 123\nc: !!float 1\nd: ! 12\ne: !!null ''",
    "a: |\n  x\n  y\nb: >\n  folded\n  text\n",
    "a: 1\na: 2",
    "a: [1, {b: [2, 3]}, 'q', \"d\\u00e9\", 阳光花园]",
    "a: &x {b: 1}\nc: *x",
    "base: &b {x: 1}\nd:\n  <<: *b\n  y: 2",
    "a: &y 1\nb: 2",
    "a: !!set {x, y}",
    "a: !!omap [x: 1]",
    "? a\n? b\n: 1",
    "!!map {a: 1}",
]

BAD = [
    "a: b: c",
    "mqtt: [unclosed\n",
    "- {id: x, kind: [",
    "a:\n  - b\n c: d",
    "a: 1\n\tb: 2",
    "a: *nope",
    "x: @foo",
    "a: 1\n---\nb: 2",
    "key: 'unterminated",
    "a: !custom 1",
    "a: !!python/object:os.system x",
    "%YAML 2.0\n---\na: 1",
    "? [a]\n: 1",
]


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (``1 == True`` would hide a wrong resolver)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return (
            list(a) == list(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
            and all(same(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b or (a != a and b != b))  # NaN


def outcome(load: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", load(text)
    except Exception as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("text", EDGE_CASES)
def test_same_data_as_safe_load(text: str) -> None:
    assert same(load_yaml(text), yaml.safe_load(text))


def test_shipped_files_load_the_same_through_the_streaming_path() -> None:
    files = [ROOT / "examples" / "community.yaml", ROOT / "rules" / "defaults.yaml"]
    for path in files:
        text = path.read_text(encoding="utf-8")
        reference = yaml.safe_load(text)
        assert same(_stream_build(text), reference), path  # not deferred to PyYAML: the fast path itself
        assert same(load_yaml(text), reference), path


def test_a_large_registry_loads_the_same() -> None:
    devices = [
        {"id": f"b{b:04d}-d{d:02d}", "building": f"b{b:04d}", "kind": "smoke", "floor": d % 30, "location": None}
        for b in range(300)
        for d in range(30)
    ]
    text = yaml.safe_dump({"buildings": [{"id": f"b{b:04d}", "floors": 30} for b in range(300)], "devices": devices})
    assert same(load_yaml(text), yaml.safe_load(text))


@pytest.mark.parametrize("text", BAD)
def test_same_errors_as_safe_load(text: str) -> None:
    expected = outcome(yaml.safe_load, text)
    assert expected[0] != "ok"
    assert outcome(load_yaml, text) == expected


def test_bad_config_names_line_column_and_the_problem_as_before(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  url: mqtt://x:1883\n  qos: a: b\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    # PyYAML's wording (libyaml would say "mapping values are not allowed in this context")
    assert caught.value.problems == [f"{path}: invalid YAML: line 3, column 9: mapping values are not allowed here"]
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {id: x, kind: [\n", encoding="utf-8")
    with pytest.raises(RulesError) as bad_rules:
        read_rules_file(rules, label="rules_file: r.yaml: ")
    assert bad_rules.value.problems == [
        "rules_file: r.yaml: invalid YAML: line 2, column 1: expected the node content, but found '<stream end>'"
    ]


def test_timestamps_and_binary_keep_their_types() -> None:
    data = load_yaml("when: 2024-03-01 08:00:00\nday: 2024-03-01\nblob: !!binary aGk=")
    assert data == {
        "when": datetime.datetime(2024, 3, 1, 8, 0),
        "day": datetime.date(2024, 3, 1),
        "blob": b"hi",
    }
