"""``firegrid check-config FILE``: every problem with its path, exit 2; or a one-line summary, exit 0."""

from __future__ import annotations

import argparse

from common.pg import redact
from gateway.config import ConfigError, FiregridConfig, exit_with_problems, load_or_exit
from rules.loader import load_rule_set


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="the YAML config file")


def summary(config: FiregridConfig) -> str:
    grids = {b.grid for b in config.buildings}
    kinds: dict[str, int] = {}
    for device in config.devices:
        kinds[device.kind.value] = kinds.get(device.kind.value, 0) + 1
    by_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"
    influx = f"InfluxDB {config.influx.api} at {config.influx.url}" if config.influx.url else "no InfluxDB"
    owned = ""
    if config.mqtt.buildings:
        part = config.owned()
        owned = f"; this gateway owns {len(config.mqtt.buildings)} buildings ({len(part.devices)} devices)"
    store = f"PostgreSQL store {redact(config.store.url)}" if config.store.url else f"SQLite store {config.store.path}"
    return (
        f"ok: {len(config.buildings)} buildings in {len(grids)} grids, {len(config.devices)} devices ({by_kind}); "
        f"MQTT {config.mqtt.host}:{config.mqtt.port}; {influx}; {store}{owned}"
        + (f"; {len(config.inspection_points)} inspection points" if config.inspection_points else "")
        + (f"\n{cluster_summary(config)}" if config.cluster is not None else "")
    )


def cluster_summary(config: FiregridConfig) -> str:
    cluster = config.cluster
    assert cluster is not None
    return (
        f"cluster: member {cluster.member}, {cluster.partitions} partitions, lease TTL {cluster.lease_ttl_s:g} s, "
        f"renew every {cluster.renew_interval_s:g} s, probe every {cluster.probe_interval_s:g} s, "
        f"broker ack wait {cluster.ack_wait_s:g} s"
    )


def validate_all(config: FiregridConfig) -> list[str]:
    """Checks that need more than the model: the rules section, validated by the rules package."""
    problems: list[str] = []
    try:
        load_rule_set(config)  # the rules package validates its own section
    except ConfigError as exc:
        problems.extend(exc.problems)
    return problems


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.file)
    problems = validate_all(config)
    if problems:
        exit_with_problems(problems)
    print(summary(config))
    return 0
