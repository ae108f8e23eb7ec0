"""Simulator: community model, signals, scenarios, determinism, the contract, recording (no broker needed)."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path

import orjson
import pytest

from gateway.config import load_config
from gateway.ingest.contract import Decoder, Rejected, registry_from_config
from gateway.tools.cli import main as firegrid
from simulators.model import from_config, generate
from simulators.scenarios import ScenarioError, load_file, parse_spec
from simulators.sim import Simulation

START = 1_780_000_000_000  # a fixed virtual start: 2026-05-28T20:26:40Z

ALL_SCENARIOS = [
    "fire@yg01:1F+10s/3m",
    "cooking@yg01-sd-02a+5s",
    "callpoint@yg01-cp-01+20s/1m",
    "extinguisher-removed@yg01-ex-01+0s/60s",
    "leak@yg02-ex-01,rate=0.05",
    "silent@yg02-sd-01a+30s/2m",
    "flapping@yg02-sd-02a/2m",
    "low-battery@yg01-ht-18",
    "skew@yg03-sd-01a,skew=10m",
    "malformed@yg01-sd-09a+5s",
    "disconnect@hp01+60s/2m",
]


@pytest.fixture(scope="module")
def config():
    return load_config(Path(__file__).resolve().parent.parent / "examples" / "community.yaml")


@pytest.fixture(scope="module")
def community(config):
    return from_config(config)


def run(community, specs, *, seed=1, until_s=600, **kwargs):
    sim = Simulation(
        community, seed=seed, start_ms=START, scenarios=[parse_spec(s, community) for s in specs], **kwargs
    )
    return sim.advance(START + until_s * 1000) + sim.stop(START + until_s * 1000)


def samples(messages, device):
    out = []
    for m in messages:
        if m.topic == f"firegrid/{device.split('-')[0]}/{device}/telemetry" and not m.expect:
            doc = orjson.loads(m.payload)
            out.extend(doc if isinstance(doc, list) else [doc])
    return out


def test_community_from_config_uses_the_registry_ids(config, community):
    assert [d.id for d in community.devices] == [d.id for d in config.devices]
    assert community.prefix == "firegrid"
    device = community.device("yg01-sd-b1")
    assert device is not None and device.floor == -1 and device.kind == "smoke"
    assert device.heartbeat_s == 300


def test_generated_community_is_large_unique_and_varied():
    community = generate(buildings=2000, devices_per_building=50, seed=3)
    assert len(community.devices) == 100_000
    assert len({d.id for d in community.devices}) == 100_000
    kinds = Counter(d.kind for d in community.devices)
    assert set(kinds) == {"smoke", "heat", "extinguisher", "call_point"}
    small = generate(buildings=3, devices_per_building=4)
    for b in small.buildings:
        assert {d.kind for d in small.in_building(b.id)} == {"smoke", "heat", "extinguisher", "call_point"}


def test_same_seed_same_messages_other_seed_other_messages(community):
    first = run(community, ALL_SCENARIOS, seed=5)
    again = run(community, ALL_SCENARIOS, seed=5)
    other = run(community, ALL_SCENARIOS, seed=6)
    assert [(m.t_ms, m.topic, m.payload) for m in first] == [(m.t_ms, m.topic, m.payload) for m in again]
    assert [m.payload for m in first] != [m.payload for m in other]


def test_a_device_signal_does_not_depend_on_the_other_devices(community):
    alone = community.select(["yg01-sd-01a", "yg01-ht-01"])
    full = run(community, [], until_s=1800)
    small = run(alone, [], until_s=1800)
    for device in ("yg01-sd-01a", "yg01-ht-01"):
        assert samples(full, device) == samples(small, device) and samples(full, device)


def test_every_normal_message_decodes_and_every_malformed_one_is_rejected_for_its_reason(config, community):
    decoder = Decoder(prefix="firegrid", registry=registry_from_config(config))
    messages = run(community, ALL_SCENARIOS)
    malformed = [m for m in messages if m.expect]
    assert len(malformed) >= 15
    skewed = 0
    for m in messages:
        if m.expect:
            with pytest.raises(Rejected) as caught:
                decoder.decode(m.topic, m.payload, received_ms=m.t_ms)
            assert caught.value.reason.value == m.expect, (m.label, caught.value.detail)
        else:
            decoded = decoder.decode(m.topic, m.payload, received_ms=m.t_ms)
            skewed += decoded.clock_skew
    assert skewed > 0  # the skewed device's timestamps are more than 5 minutes ahead
    reasons = {m.expect for m in malformed}
    assert {
        "not_json",
        "not_utf8",
        "wrong_shape",
        "too_many",
        "oversize",
        "wrong_type",
        "out_of_range",
        "non_finite",
        "unknown_metric",
        "bad_timestamp",
        "spoofed_id",
        "unknown_event",
        "bad_topic",
    } <= reasons


def test_normal_signals_are_realistic(community):
    messages = run(community, [], until_s=3600 * 6)
    statuses = [m for m in messages if m.topic.endswith("/status")]
    assert {m.payload for m in statuses} == {b"online", b"offline"}  # online at start, offline at a clean stop
    assert all(m.retain for m in statuses)
    heat = [s["celsius"] for s in samples(messages, "yg01-ht-01")]
    assert len(heat) >= 6 * 60 * 0.9  # every ~60 s
    assert 15 < min(heat) < max(heat) < 30 and max(heat) - min(heat) > 1.0  # daily cycle + noise
    smoke = [s["obscuration"] for s in samples(messages, "yg01-sd-01a")]
    assert max(smoke) < 0.5 and not any(s["alarm"] for s in samples(messages, "yg01-sd-01a"))
    pressure = [s["pressure_mpa"] for s in samples(messages, "yg01-ex-01")]
    assert all(1.1 < p < 1.3 for p in pressure)
    battery = [s["battery"] for s in samples(messages, "yg01-ex-01")]
    assert battery[-1] <= battery[0]
    rssi = {s["rssi"] for s in samples(messages, "yg01-sd-01a")}
    assert len(rssi) > 3
    seqs = [s["seq"] for s in samples(messages, "yg01-sd-01a")]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_growing_fire_spreads_smoke_then_heat_to_the_floor_above(community):
    messages = run(community, ["fire@yg01:1F+10s"], until_s=300)
    origin = samples(messages, "yg01-sd-01a")
    first_alarm = min(s["ts"] for s in origin if s["obscuration"] >= 3.0)
    assert START + 10_000 < first_alarm <= START + 20_000
    assert [s for s in origin if s["ts"] > first_alarm][1]["ts"] - first_alarm <= 5_000  # fast reporting
    second = samples(messages, "yg01-sd-01b")
    assert min(s["ts"] for s in second if s["obscuration"] >= 3.0) > first_alarm
    heat = [s for s in samples(messages, "yg01-ht-01") if s["ts"] >= START + 40_000]
    rise_per_min = (heat[-1]["celsius"] - heat[0]["celsius"]) / ((heat[-1]["ts"] - heat[0]["ts"]) / 60_000)
    assert rise_per_min > 8.3
    above = samples(messages, "yg01-sd-02a")
    assert max(s["obscuration"] for s in above) >= 3.0
    assert min(s["ts"] for s in above if s["obscuration"] >= 3.0) > START + 60_000
    far = samples(messages, "yg01-sd-09a")  # the fire does not reach floor 9
    assert max(s["obscuration"] for s in far) < 1.0


def test_cooking_smoke_is_one_detector_and_no_heat(community):
    messages = run(community, ["cooking@yg01-sd-02a+5s"], until_s=600)
    assert max(s["obscuration"] for s in samples(messages, "yg01-sd-02a")) > 3.5
    for other in ("yg01-sd-02b", "yg01-sd-01a"):
        assert max(s["obscuration"] for s in samples(messages, other)) < 1.0
    assert max(s["celsius"] for s in samples(messages, "yg01-ht-01")) < 35
    late = [s for s in samples(messages, "yg01-sd-02a") if s["ts"] > START + 500_000]
    assert late and max(s["obscuration"] for s in late) < 1.0  # the smoke clears


def test_call_point_extinguisher_leak_battery_silence_and_disconnect(community):
    messages = run(community, ALL_SCENARIOS, until_s=900)
    events = [
        (m.t_ms - START, orjson.loads(m.payload)["type"])
        for m in messages
        if m.topic == "firegrid/yg01/yg01-cp-01/event"
    ]
    assert events == [(20_000, "pressed"), (80_000, "reset")]
    removed = [(s["ts"] - START, s["present"]) for s in samples(messages, "yg01-ex-01")]
    assert (0, False) in removed and (60_000, True) in removed
    assert all(present for t, present in removed if t >= 60_000)
    leak = samples(messages, "yg02-ex-01")
    assert leak[-1]["pressure_mpa"] < 1.0 and leak[-1]["pressure_mpa"] < leak[0]["pressure_mpa"] - 0.2
    assert all(s["pressure_mpa"] > 1.1 for s in samples(messages, "yg01-ex-02"))  # its neighbour does not leak
    assert all(s["battery"] == 15.0 for s in samples(messages, "yg01-ht-18"))
    silent = [s["ts"] - START for s in samples(messages, "yg02-sd-01a")]
    assert not any(30_000 <= t < 150_000 for t in silent) and any(t >= 150_000 for t in silent)
    hp01 = [m for m in messages if m.topic == "firegrid/hp01/hp01-sd-01a/status"]
    assert [(m.t_ms - START, m.payload, m.label) for m in hp01][:3] == [
        (0, b"online", ""),
        (60_000, b"offline", "will"),
        (180_000, b"online", "reconnect"),
    ]
    batch = [m for m in messages if m.topic == "firegrid/hp01/hp01-sd-01a/telemetry" and m.t_ms == START + 180_000]
    assert batch and isinstance(orjson.loads(batch[0].payload), list)  # buffered samples, sent as one array
    assert not [
        m
        for m in messages
        if m.topic.startswith("firegrid/hp01/")
        and "telemetry" in m.topic
        and START + 60_000 <= m.t_ms < START + 180_000
    ]


def test_flapping_detector_crosses_its_threshold_again_and_again(community):
    messages = run(community, ["flapping@yg02-sd-02a"], until_s=400)
    states = [s["obscuration"] >= 3.0 for s in samples(messages, "yg02-sd-02a") if s["ts"] < START + 360_000]
    changes = sum(1 for a, b in itertools.pairwise(states) if a != b)
    assert changes >= 12  # 10 s in alarm, 40 s clear: seven cycles in the default six minutes


def test_drill_marks_every_telemetry_and_event_payload(community):
    messages = run(community, ["callpoint@yg01-cp-01+1s", "fire@yg01:1F"], until_s=60, drill=True)
    for m in messages:
        if not m.topic.endswith("/status"):
            assert orjson.loads(m.payload)["drill"] is True


def test_bad_specs_are_refused_with_the_reason(community):
    for spec, words in [
        ("explode@yg01", "unknown scenario"),
        ("fire@nowhere", "unknown target"),
        ("fire@yg01:99F", "no smoke"),
        ("fire@yg01+soon", "bad duration"),
        ("callpoint@yg01-sd-01a", "needs call_point"),
        ("leak@yg01-ex-01,rate", "key=value"),
        ("fire", "NAME@TARGET"),
        ("fire@*", "only 'disconnect'"),
    ]:
        with pytest.raises(ScenarioError, match=words):
            parse_spec(spec, community)


def test_scenario_file_with_expectations(tmp_path, community):
    path = tmp_path / "drill.yaml"
    path.write_text(
        "name: floor-2\nduration: 3m\nscenarios:\n  - fire@yg01:2F+5s\n"
        "  - {type: cooking, target: yg02-sd-01a, at: 10s, duration: 1m, params: {peak: 5}}\n"
        "expect:\n  - {severity: fire, device: yg01-sd-02a, within: 30s}\n"
        "  - {severity: fire, building: yg02, floor: 1, confirmed: true, absent: true}\n"
    )
    loaded = load_file(path, community)
    assert loaded.name == "floor-2" and loaded.duration_ms == 180_000 and len(loaded.scenarios) == 2
    assert loaded.scenarios[1].params == {"peak": "5"} and loaded.scenarios[1].at_ms == 10_000
    assert loaded.expectations is not None and loaded.expectations[0].floor == 2
    assert loaded.expectations[1].absent
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenarios:\n  - {type: fire, target: yg01:2F, when: 5s}\n")
    with pytest.raises(ScenarioError, match=r"scenarios\[0\].*when"):
        load_file(bad, community)


def test_derived_expectations_follow_the_default_rules(community):
    fire = parse_spec("fire@yg01:1F+10s", community).expectations(community)
    required = [e for e in fire if e.required]
    assert [(e.severity, e.device, e.confirmed) for e in required] == [
        ("fire", "yg01-sd-01a", None),
        ("fire", None, True),
    ]
    cooking = parse_spec("cooking@yg01-sd-02a", community).expectations(community)
    assert any(e.absent and e.confirmed for e in cooking)
    unconfirmed = next(e for e in cooking if e.required and not e.absent)
    assert unconfirmed.matches(
        {"severity": "fire", "building": "yg01", "floor": 2, "device": "yg01-sd-02a", "confirmed": False}
    )
    assert not unconfirmed.matches(
        {"severity": "fire", "building": "yg01", "floor": 2, "device": "yg01-sd-02a", "confirmed": True}
    )


def test_cli_records_json_lines_replay_reads(tmp_path, community_config_path, capsys):
    out = tmp_path / "rec.jsonl"
    code = firegrid(
        [
            "simulate",
            "--config",
            str(community_config_path),
            "--scenario",
            "malformed@yg01-sd-01a+1s",
            "--scenario",
            "callpoint@yg01-cp-01+2s",
            "--duration",
            "2m",
            "--fast",
            "--dry-run",
            "--record",
            str(out),
            "--start",
            str(START),
            "--quiet",
        ]
    )
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {tuple(sorted(line)) for line in lines} == {("payload", "t", "topic")}
    assert all(isinstance(line["t"], int) for line in lines)
    by_topic = {line["topic"]: line["payload"] for line in lines}
    assert by_topic["firegrid/yg01/yg01-cp-01/event"]["type"] == "pressed"
    assert any(line["payload"] == "online" for line in lines)
    assert any(isinstance(line["payload"], list) for line in lines)  # the too_many batch, recorded as sent
    assert any(isinstance(line["payload"], str) and "NaN" in line["payload"] for line in lines)
    assert "published" in capsys.readouterr().out


def test_cli_usage_errors_exit_2(tmp_path, community_config_path, capsys):
    assert firegrid(["simulate", "--dry-run", "--fast"]) == 2
    assert firegrid(["simulate", "--config", str(community_config_path), "--scenario", "fire@zz", "--dry-run"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert firegrid(["simulate", "--buildings", "2", "--rate", "10", "--dry-run"]) == 2
