"""``firegrid replay``: recorded traffic through the live decoder and rules, through the real CLI entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from gateway.tools.cli import main

T0 = 1_800_000_000_000
CONFIG: dict[str, Any] = {
    "buildings": [{"id": "b1", "name": "Building 1", "grid": "g1", "floors": 6}],
    "devices": [
        {"id": "s1", "building": "b1", "kind": "smoke", "floor": 2},
        {"id": "s2", "building": "b1", "kind": "smoke", "floor": 2},
        {"id": "s3", "building": "b1", "kind": "smoke", "floor": 5},
        {"id": "c1", "building": "b1", "kind": "call_point", "floor": 1},
    ],
    "contract": {"allow_unregistered": False},
}


def line(seconds: float, device: str, channel: str, payload: Any) -> bytes:
    return orjson.dumps(
        {"t": T0 + round(seconds * 1000), "topic": f"firegrid/b1/{device}/{channel}", "payload": payload}
    )


def recording() -> list[bytes]:
    out = [line(0, d, "status", "online") for d in ("s1", "s2", "s3", "c1")]
    for second in range(0, 40):
        out.append(
            line(
                second, "s1", "telemetry", {"ts": T0 + second * 1000, "seq": second, "obscuration": 0.2 + second * 0.2}
            )
        )
        out.append(line(second, "s3", "telemetry", {"ts": T0 + second * 1000, "obscuration": 0.1}))
    for second in range(20, 40):
        out.append(line(second, "s2", "telemetry", {"seq": second, "obscuration": 4.5}))  # ts absent: receipt time
    # the same sample twice (device, seq and values): a duplicate, dropped
    out.append(line(20, "s2", "telemetry", {"seq": 39, "obscuration": 4.5}))
    out.append(line(41, "s1", "telemetry", "this is not json"))  # rejected: not_json
    out.append(line(42, "zz", "telemetry", {"obscuration": 1}))  # rejected: unknown device
    out.append(b'{"t": "yesterday"}')  # not a recording line
    out.append(b"")
    out.append(line(45, "c1", "event", {"type": "pressed"}))
    out.append(line(50, "c1", "event", {"type": "reset"}))
    return out


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "firegrid.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    rec = tmp_path / "traffic.jsonl"
    rec.write_bytes(b"\n".join(recording()) + b"\n")
    return cfg, rec


def replay_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[list[dict[str, Any]], str]:
    assert main(["replay", *args, "--json"]) == 0
    captured = capsys.readouterr()
    return [orjson.loads(x) for x in captured.out.splitlines()], captured.err


def test_replay_prints_the_timeline_as_json(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, rec = files
    timeline, err = replay_json(capsys, str(rec), "--config", str(cfg))
    for t in timeline:
        assert {
            "t",
            "transition",
            "rule",
            "severity",
            "building",
            "floor",
            "device",
            "confirmed",
            "value",
            "reason",
        } <= set(t)
    raised = [(t["rule"], t["device"], t["t"] - T0) for t in timeline if t["transition"] == "raised"]
    # s1 crosses 3 %/m at 14 s, held 5 s -> 19 s; s2 alarms at 20 s (its first sample) and held 5 s -> 25 s
    assert ("smoke-obscuration", "s1", 19_000) in raised
    assert ("smoke-obscuration", "s2", 25_000) in raised
    assert ("fire-confirmed", None, 25_000) in raised
    assert ("call-point-pressed", "c1", 45_000) in raised
    confirmed = next(t for t in timeline if t["rule"] == "fire-confirmed")
    assert (confirmed["confirmed"], confirmed["floor"], confirmed["severity"]) == (True, 2, "fire")
    assert {e[1] for e in confirmed["evidence"]} == {"s1", "s2"}
    first = next(t for t in timeline if t["rule"] == "smoke-obscuration" and t["device"] == "s1")
    assert first["confirmed"] is False and first["value"] == pytest.approx(3.8)
    assert not any(t["device"] == "s3" for t in timeline)  # another floor, quiet
    assert ("cleared", "call-point-pressed") in {(t["transition"], t["rule"]) for t in timeline}
    # the duplicate 99 %/m sample was dropped, as the live gateway drops it
    assert all(t["value"] != 99.0 for t in timeline)
    assert "1 duplicates" in err and "1 not_json" in err and "1 unknown_device" in err
    assert "line" in err and "needs t (epoch ms)" in err


def test_replay_twice_gives_the_same_timeline(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, rec = files
    first, _ = replay_json(capsys, str(rec), "--config", str(cfg))
    second, _ = replay_json(capsys, str(rec), "--config", str(cfg))
    assert first == second and first


def test_replay_table_output(files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    cfg, rec = files
    assert main(["replay", str(rec), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "raised   fire        fire-confirmed" in out and "[CONFIRMED]" in out
    assert "2027-01-15T08:00:19.000Z" in out  # T0 + 19 s, in UTC
    assert out.strip().splitlines()[-1].startswith("replayed")


def test_backtest_other_rules(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, rec = files
    other = tmp_path / "stricter.yaml"
    other.write_text(
        yaml.safe_dump(
            [
                {
                    "id": "smoke-obscuration",
                    "kind": "threshold",
                    "severity": "fire",
                    "metric": "obscuration",
                    "above": 5.0,
                    "for": "5s",
                },
                {"id": "call-point-pressed", "kind": "event", "severity": "fire", "event": "pressed"},
            ]
        ),
        encoding="utf-8",
    )
    timeline, err = replay_json(capsys, str(rec), "--config", str(cfg), "--rules", str(other))
    raised = [(t["rule"], t["device"]) for t in timeline if t["transition"] == "raised"]
    assert raised == [("smoke-obscuration", "s1"), ("call-point-pressed", "c1")]  # s2 (4.5 %/m) no longer alarms
    assert "smoke-obscuration: raised 2 -> 1" in err and "fire-confirmed: raised 1 -> 0" in err


def test_bad_inputs_exit_2(files: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, rec = files
    assert main(["replay", str(tmp_path / "missing.jsonl"), "--config", str(cfg)]) == 2
    assert "cannot read" in capsys.readouterr().err
    bad_rules = tmp_path / "bad.yaml"
    bad_rules.write_text("- {id: x, kind: threshold, severity: fire, metric: obscuration, above: 3, for: soon}\n")
    assert main(["replay", str(rec), "--config", str(cfg), "--rules", str(bad_rules)]) == 2
    assert "rules[0].for: not a duration" in capsys.readouterr().err
    assert main(["replay", str(rec), "--config", str(tmp_path / "nope.yaml")]) == 2


def test_replay_reads_what_simulate_records(
    tmp_path: Path, community_config_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The simulator's --record output, a growing fire and cooking smoke: confirmed on one floor only."""
    rec = tmp_path / "sim.jsonl"
    code = main(
        [
            "simulate",
            "--config",
            str(community_config_path),
            "--dry-run",
            "--fast",
            "--quiet",
            "--duration",
            "8m",
            "--start",
            "2026-11-29T08:00:00Z",
            "--seed",
            "7",
            "--scenario",
            "fire@yg01:1F+60s",
            "--scenario",
            "cooking@hp01:2F+60s",
            "--record",
            str(rec),
        ]
    )
    assert code == 0 and rec.stat().st_size > 0
    capsys.readouterr()
    timeline, _ = replay_json(capsys, str(rec), "--config", str(community_config_path))
    confirmed = {
        (t["building"], t["floor"]) for t in timeline if t["rule"] == "fire-confirmed" and t["transition"] == "raised"
    }
    assert ("yg01", 1) in confirmed
    assert not any(b == "hp01" for b, _ in confirmed)  # cooking smoke: one detector, unconfirmed
    assert any(t["building"] == "hp01" and t["severity"] == "fire" and t["confirmed"] is False for t in timeline)
