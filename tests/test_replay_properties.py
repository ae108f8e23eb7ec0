"""Property: replaying the same recording twice gives the same timeline, whatever the recording holds (valid
traffic, malformed payloads, broken lines), and replay never fails on its content."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import parse_config
from gateway.tools.replay import replay
from rules.loader import load_rule_set

CONFIG = parse_config(
    {
        "buildings": [{"id": "b1", "name": "B1", "grid": "g1", "floors": 3}],
        "devices": [
            {"id": "s1", "building": "b1", "kind": "smoke", "floor": 1},
            {"id": "s2", "building": "b1", "kind": "smoke", "floor": 1},
            {"id": "h1", "building": "b1", "kind": "heat", "floor": 1},
            {"id": "c1", "building": "b1", "kind": "call_point", "floor": 1},
        ],
    }
)
RULES = load_rule_set(CONFIG)
T0 = 1_800_000_000_000

payloads: dict[str, Any] = {
    "s1": st.fixed_dictionaries(
        {"obscuration": st.sampled_from([0.1, 2.0, 3.0, 9.0])}, optional={"alarm": st.booleans()}
    ),
    "s2": st.fixed_dictionaries({"obscuration": st.sampled_from([0.1, 4.0])}),
    "h1": st.fixed_dictionaries({"celsius": st.floats(15, 90)}),
    "c1": st.fixed_dictionaries({"battery": st.floats(0, 100)}),
}
message = st.one_of(
    st.sampled_from(sorted(payloads)).flatmap(lambda d: st.tuples(st.just(f"firegrid/b1/{d}/telemetry"), payloads[d])),
    st.tuples(st.just("firegrid/b1/c1/event"), st.fixed_dictionaries({"type": st.sampled_from(["pressed", "reset"])})),
    st.tuples(
        st.sampled_from(["firegrid/b1/s1/status", "firegrid/b1/h1/status"]), st.sampled_from(["online", "offline"])
    ),
    st.tuples(st.sampled_from(["firegrid/b1/s1/telemetry", "bad/topic", "firegrid/b1/zz/event"]), st.text(max_size=20)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 20_000), message), max_size=80), st.binary(max_size=30))
def test_replay_is_deterministic(tmp_path: Path, steps: list[tuple[int, tuple[str, Any]]], junk: bytes) -> None:
    t = T0
    lines = []
    for dt, (topic, payload) in steps:
        t += dt
        lines.append(orjson.dumps({"t": t, "topic": topic, "payload": payload}))
    lines.insert(len(lines) // 2, junk.replace(b"\n", b" "))
    path = tmp_path / "rec.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    first = replay(path, config=CONFIG, rule_set=RULES)
    second = replay(path, config=CONFIG, rule_set=RULES)
    assert first.transitions == second.transitions
    assert (first.messages, first.inputs, first.rejected) == (second.messages, second.inputs, second.rejected)
    assert first.messages + len(first.bad_lines) == sum(1 for x in lines if x.strip())
