"""Configuration: defaults, environment overrides, secrets from env and files, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, load_config, parse_config
from gateway.tools.cli import main

MINIMAL = {
    "buildings": [{"id": "b1", "name": "Block 1", "grid": "g1", "floors": 6}],
    "devices": [{"id": "sd-1", "building": "b1", "kind": "smoke", "floor": 3}],
}


def write(tmp_path: Path, data: object, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_example_community_is_valid(community_config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(community_config_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 12 buildings in 3 grids")
    config = load_config(community_config_path)
    kinds = {d.kind.value for d in config.devices}
    assert kinds == {"smoke", "heat", "extinguisher", "call_point"}


def test_defaults_apply() -> None:
    config = parse_config(MINIMAL)
    assert config.mqtt.topic_prefix == "firegrid"
    assert config.mqtt.qos == 1
    assert config.influx.api == "v1"
    assert config.device("sd-1") is not None
    assert config.building("b1") is not None and config.building("nope") is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"mqtt": {"url": "http://x"}}, "mqtt.url: Value error"),
        ({"mqtt": {"qoss": 1}}, "mqtt.qoss: unknown key"),
        ({"mqtt": {"qos": 2}}, "mqtt.qos:"),
        ({"influx": {"batch_size": "many"}}, "influx.batch_size:"),
        (
            {"influx": {"url": "http://i:8086", "api": "v2"}},
            "influx: Value error, api v2 needs org, bucket, token",
        ),
        ({"buildings": [{"id": "b 1", "name": "x", "grid": "g"}]}, "buildings[0].id:"),
        ({"buildings": [{"id": "b1", "name": "x"}]}, "buildings[0].grid: required key is missing"),
        ({"http": {"tokens": [{"name": "t", "token": "x", "role": "root"}]}}, "http.tokens[0].role:"),
        ({"rules": [], "rules_file": "r.yaml"}, "rules_file: give either"),
    ],
)
def test_wrong_key_or_type_is_named(data: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(expected.split(" Value error")[0]) for p in info.value.problems), info.value.problems
    if "Value error" not in expected:
        assert any(expected in p for p in info.value.problems), info.value.problems


def test_cross_field_errors_name_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        "buildings": [{"id": "b1", "name": "B1", "grid": "g1", "floors": 5}],
        "devices": [
            {"id": "d1", "building": "b1", "kind": "smoke", "floor": 2},
            {"id": "d2", "building": "b1", "kind": "heat", "floor": 9},
            {"id": "d1", "building": "b1", "kind": "heat"},
            {"id": "d3", "building": "b9", "kind": "smoke"},
        ],
    }
    assert main(["check-config", str(write(tmp_path, data))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "devices[3].building: unknown building 'b9'" in err
    assert "devices[2].id: duplicate device 'd1'" in err
    assert any(line.startswith("devices[1].floor: floor 9 outside building 'b1'") for line in err)


def test_every_problem_is_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"mqtt": {"url": "ftp://x", "colour": "red"}, "store": {"pathh": "x"}}
    assert main(["check-config", str(write(tmp_path, data))]) == 2
    err = capsys.readouterr().err
    assert "mqtt.url:" in err and "mqtt.colour: unknown key" in err and "store.pathh: unknown key" in err


def test_invalid_yaml_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: [unclosed\n")
    assert main(["check-config", str(bad)]) == 2
    assert "invalid YAML: line" in capsys.readouterr().err
    assert main(["check-config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    assert main(["check-config", str(scalar)]) == 2
    assert "top level must be a mapping" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"mqtt:\n  host: broker\xff\n", "not UTF-8 text: byte"),
        (b"mqtt:\n  port: !!int ten\n", "invalid YAML: invalid literal for int()"),
        (b"mqtt:\n  keepalive_s: !!float x\n", "invalid YAML: could not convert string to float"),
    ],
)
def test_undecodable_config_is_a_clear_error_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, expected: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    assert main(["check-config", str(bad)]) == 2
    assert expected in capsys.readouterr().err
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(content.replace(b"mqtt:", b"rules:"))
    cfg = tmp_path / "with-rules.yaml"
    cfg.write_text(f"rules_file: {rules}\n")
    assert main(["check-config", str(cfg)]) == 2
    assert expected in capsys.readouterr().err


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, {**MINIMAL, "mqtt": {"url": "mqtt://file-host:1883", "client_id": "from-file"}})
    monkeypatch.setenv("FIREGRID_MQTT__URL", "mqtts://env-host:8883")
    monkeypatch.setenv("FIREGRID_INFLUX__BATCH_SIZE", "123")
    config = load_config(path)
    assert config.mqtt.url == "mqtts://env-host:8883"
    assert config.mqtt.client_id == "from-file"  # the rest of the section still comes from the file
    assert config.mqtt.use_tls and config.mqtt.port == 8883
    assert config.influx.batch_size == 123


def test_bad_environment_value_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIREGRID_MQTT__QOS", "7")
    with pytest.raises(ConfigError) as info:
        parse_config({})
    assert any(p.startswith("mqtt.qos:") for p in info.value.problems)


def test_secrets_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "influx_token"
    secret_file.write_text("tok-from-file\n")
    monkeypatch.setenv("MQTT_PW", "pw-from-env")
    data = {
        "mqtt": {"password": "env:MQTT_PW"},
        "influx": {
            "url": "http://i:8086",
            "api": "v2",
            "org": "o",
            "bucket": "b",
            "token": f"file:{secret_file}",
        },
    }
    config = parse_config(data)
    assert config.mqtt.password is not None and config.mqtt.password.get_secret_value() == "pw-from-env"
    assert config.influx.token is not None and config.influx.token.get_secret_value() == "tok-from-file"
    # secrets never show in a repr or a dump
    assert "pw-from-env" not in repr(config) and "tok-from-file" not in config.model_dump_json()


def test_missing_secret_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"password": "env:FIREGRID_TEST_UNSET_VARIABLE"}})
    assert info.value.problems == ["mqtt.password: environment variable 'FIREGRID_TEST_UNSET_VARIABLE' is not set"]
    with pytest.raises(ConfigError) as info:
        parse_config({"mqtt": {"password": f"file:{tmp_path}/nope"}})
    assert info.value.problems[0].startswith("mqtt.password: cannot read secret file")


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"store": {"path": "state/db.sqlite"}})
    config = load_config(path)
    assert config.resolve_path(config.store.path) == tmp_path / "state/db.sqlite"


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("check-config", "run", "demo", "simulate", "replay", "verify", "acl"):
        assert command in out
