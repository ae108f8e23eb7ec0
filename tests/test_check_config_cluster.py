"""The ``cluster:`` section: its defaults, its cross-field rules, and how ``firegrid check-config`` shows it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, parse_config
from gateway.tools.cli import main

MINIMAL = {
    "buildings": [{"id": "b1", "name": "Block 1", "grid": "g1", "floors": 6}],
    "devices": [{"id": "sd-1", "building": "b1", "kind": "smoke", "floor": 3}],
}
CLUSTERED = {
    **MINIMAL,
    "store": {"url": "postgresql://firegrid@db:5432/firegrid"},
    "mqtt": {"url": "mqtt://nats-1:1883", "protocol": "v311"},
    "cluster": {"member": "gw-1"},
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def test_cluster_defaults() -> None:
    cluster = parse_config(CLUSTERED).cluster
    assert cluster is not None and cluster.member == "gw-1"
    assert (cluster.partitions, cluster.lease_ttl_s, cluster.renew_interval_s) == (256, 10, 2)
    assert (cluster.probe_interval_s, cluster.ack_wait_s) == (1, 3)
    assert parse_config(MINIMAL).cluster is None
    assert parse_config(MINIMAL).store.url is None


def test_check_config_prints_a_cluster_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, CLUSTERED))]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ok: 1 buildings")
    assert out[1] == (
        "cluster: member gw-1, 256 partitions, lease TTL 10 s, renew every 2 s, probe every 1 s, broker ack wait 3 s"
    )
    # no cluster section, no cluster line
    assert main(["check-config", str(write(tmp_path, MINIMAL))]) == 0
    assert "cluster" not in capsys.readouterr().out


def test_check_config_lists_every_cluster_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {
        **MINIMAL,
        "mqtt": {"protocol": "v5", "buildings": ["b1"], "shared_group": "gws"},  # and no store.url at all
        "uitd": {"listen": "127.0.0.1:9000"},
        "cluster": {"member": "gw-1"},
    }
    assert main(["check-config", str(write(tmp_path, data))]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "store.url: cluster mode needs a postgresql:// URL (the gateways share one store)" in err
    assert "mqtt.protocol: cluster mode needs v311 (the NATS broker speaks only MQTT 3.1.1)" in err
    assert any(line.startswith("mqtt.buildings: not with cluster mode") for line in err)
    assert any(line.startswith("mqtt.shared_group: not with cluster mode") for line in err)
    assert any(line.startswith("uitd.listen: not with cluster mode yet") for line in err)


@pytest.mark.parametrize(
    ("cluster", "expected"),
    [
        ({}, "cluster.member: required key is missing"),
        ({"member": "gw 1"}, "cluster.member:"),
        ({"member": "gw-1", "partitions": 0}, "cluster.partitions:"),
        ({"member": "gw-1", "partitions": 4097}, "cluster.partitions:"),
        ({"member": "gw-1", "lease_ttl": 10}, "cluster.lease_ttl: unknown key"),
        ({"member": "gw-1", "brokers": ["nats://n1:4222"]}, "cluster.brokers:"),
        ({"member": "gw-1", "renew_interval_s": 4}, "cluster: renew_interval_s must be at most lease_ttl_s / 3"),
        (
            {"member": "gw-1", "renew_interval_s": 1, "probe_interval_s": 1.5},
            "cluster: probe_interval_s must be at most renew_interval_s",
        ),
    ],
)
def test_a_bad_cluster_section_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cluster: dict, expected: str
) -> None:
    data = {**CLUSTERED, "cluster": cluster}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems
    assert main(["check-config", str(write(tmp_path, data))]) == 2
    assert any(line.startswith(expected) for line in capsys.readouterr().err.splitlines())


def test_a_store_url_that_is_not_postgresql_is_refused_by_the_store_section() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**CLUSTERED, "store": {"url": "sqlite:///var/firegrid.sqlite"}})
    assert "store.url: must be a postgresql:// (or postgres://) URL" in info.value.problems


def test_the_store_url_may_be_given_as_postgres() -> None:
    data = {**CLUSTERED, "store": {"url": "postgres://firegrid@db/firegrid"}}
    assert parse_config(data).store.url == "postgres://firegrid@db/firegrid"
