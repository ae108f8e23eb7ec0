"""Recorded simulator traffic through ``firegrid replay`` (the rules engine, no servers): cooking smoke stays an
unconfirmed alarm, a growing fire becomes a confirmed one, and malformed messages are rejected, not fatal."""

from __future__ import annotations

import json

from gateway.tools.cli import main as firegrid

START = "1780000000000"


def record_and_replay(tmp_path, config, capsys, *specs: str, duration: str = "10m") -> list[dict]:
    path = tmp_path / "rec.jsonl"
    args = ["simulate", "--config", str(config), "--duration", duration, "--fast", "--dry-run", "--quiet"]
    for spec in specs:
        args += ["--scenario", spec]
    assert firegrid([*args, "--record", str(path), "--start", START, "--seed", "9"]) == 0
    capsys.readouterr()
    assert firegrid(["replay", str(path), "--config", str(config), "--json"]) == 0
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_cooking_smoke_raises_an_unconfirmed_alarm_and_no_confirmed_fire(tmp_path, community_config_path, capsys):
    timeline = record_and_replay(tmp_path, community_config_path, capsys, "cooking@yg01-sd-02a+10s")
    raised = [t for t in timeline if t["transition"] == "raised"]
    assert raised and {t["device"] for t in raised} == {"yg01-sd-02a"}
    assert all(t["severity"] == "fire" and t["confirmed"] is not True for t in raised)
    assert not [t for t in timeline if t["confirmed"] is True or t["rule"] == "fire-confirmed"]
    assert {t["device"] for t in timeline if t["transition"] == "cleared"} == {"yg01-sd-02a"}  # the smoke cleared


def test_growing_fire_is_confirmed_on_its_floor_and_spreads_upstairs(tmp_path, community_config_path, capsys):
    timeline = record_and_replay(tmp_path, community_config_path, capsys, "fire@yg01:1F+10s", duration="4m")
    confirmed = [t for t in timeline if t["rule"] == "fire-confirmed" and t["transition"] == "raised"]
    assert [(t["building"], t["floor"]) for t in confirmed] == [("yg01", 1), ("yg01", 2)]
    rules = {t["rule"] for t in timeline if t["floor"] == 1}
    assert {"smoke-obscuration", "heat-rate-of-rise"} <= rules


def test_scenario_alerts_from_replay(tmp_path, community_config_path, capsys):
    timeline = record_and_replay(
        tmp_path,
        community_config_path,
        capsys,
        "callpoint@yg02-cp-01+5s",
        "extinguisher-removed@yg03-ex-01+5s/90s",
        "low-battery@yg01-ht-18",
        "disconnect@hp02-sd-01a+10s/2m",
        "malformed@yg01-sd-01a+3s",
        "skew@yg01-sd-09a",
        "leak@yg02-ex-01,rate=0.05",
        "silent@yg02-sd-01a+10s",
        duration="12m",
    )
    raised = {(t["rule"], t["device"]) for t in timeline if t["transition"] == "raised"}
    assert raised == {
        ("call-point-pressed", "yg02-cp-01"),
        ("extinguisher-missing", "yg03-ex-01"),
        ("battery-low", "yg01-ht-18"),
        ("device-absent", "hp02-sd-01a"),
        ("extinguisher-pressure", "yg02-ex-01"),
        ("device-absent", "yg02-sd-01a"),
    }


def test_flapping_detector_is_held_and_marked_flapping(tmp_path, community_config_path, capsys):
    timeline = record_and_replay(tmp_path, community_config_path, capsys, "flapping@yg02-sd-02a", duration="8m")
    assert [t for t in timeline if t["flapping"] and t["device"] == "yg02-sd-02a"]
