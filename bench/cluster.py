"""Bench: throughput of N cluster-mode gateways (1, 2, 3) against one, in the same run, end to end through NATS.

One set of servers for the whole run (testkit/cluster.py: PostgreSQL, InfluxDB, the three-node NATS cluster with
16 partitions, the receivers) and the acceptance test's city (120 buildings x 10 devices).  For each N:

1. the N gateways start and take the partitions (their persistent sessions exist from then on), then stop
   gracefully: the sessions stay on the broker, durable, and wait for their next owner;
2. the devices publish a backlog (QoS 1, every reading acknowledged by the broker, i.e. stored in ``$MQTT_msgs``);
3. the N gateways start together and drain it.  The figure is readings/s committed end to end: the backlog divided
   by the time from the drain's first fenced store transaction to its last (``cluster_commits.at``), once the
   gateways' ``firegrid_mqtt_acks_total`` (messages acknowledged to the broker after the group commit), summed,
   reaches the backlog.

Figures: ``cluster.readings_per_s@N`` for N = 1, 2, 3, with the 1-gateway figure as baseline (the ratio is the
scaling).  The broker tier is shared, so a ratio near 1 says the broker, not the gateway, is the limit.

    python -m bench.cluster            # 30,000 readings per N
    python -m bench.cluster --quick    # 4,000

It fails (exit 2, the reason on stderr and in the notes) when cluster mode is not available: ``firegrid check-config``
refuses the ``cluster`` section, or a gateway does not start or take its partitions in time.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchError, Figure, bench_parser, emit
from testkit.cluster import (
    MEMBERS,
    ClusterHarness,
    HarnessError,
    LoadGenerator,
    check_config,
    cluster_section_rejected,
    pg_rows,
)

RUNS = 1  # three cluster starts and three backlogs: minutes, not seconds
TIMEOUT_S = 600
PUBLISH_RATE = 3000.0  # offered; the broker's PUBACKs set what the devices really reach
ACKS_METRIC = "firegrid_mqtt_acks_total"


def _publish_backlog(harness: ClusterHarness, readings: int) -> int:
    """Publish ``readings`` readings and wait for every PUBACK; the number acknowledged."""
    load = LoadGenerator(harness.nats.nodes, layout=harness.layout, rate=PUBLISH_RATE, pipelined_every=0).start()
    try:
        deadline = time.monotonic() + max(60.0, readings / 200)
        while load.published < readings:
            if time.monotonic() > deadline:
                raise BenchError(f"the devices published only {load.published} of {readings} readings in time")
            time.sleep(0.05)
        load.drain(timeout=120)
    finally:
        load.stop()
    stats = load.stats()
    if stats.unacknowledged:
        raise BenchError(f"{stats.unacknowledged} readings never acknowledged by the broker")
    return stats.acked


def _drain(harness: ClusterHarness, members: list[str], backlog: int) -> float:
    """Start ``members`` together and time their draining of ``backlog``: readings/s.

    The window is the store's own: from the first to the last ``cluster_commits`` row of the drain (PostgreSQL's
    clock), so neither the processes' start nor this loop's polling counts; the polled counter only says when the
    backlog is all in (and is the window if the commits table has fewer than two rows)."""
    gateways = [harness.gateway(m) for m in members]
    launched = time.time()
    for gateway in gateways:
        gateway.launch()
    first = done = None
    deadline = time.monotonic() + max(120.0, backlog / 50)
    while done is None:
        if time.monotonic() > deadline:
            got = sum(g.metric(ACKS_METRIC) for g in gateways)
            raise BenchError(f"{len(members)} gateways acknowledged {got:.0f} of {backlog} readings in time")
        for gateway in gateways:
            if gateway.proc is not None and gateway.proc.poll() is not None:
                raise BenchError(f"{gateway.name} exited with {gateway.proc.returncode}:\n{gateway.log_tail()}")
        acked = sum(g.metric(ACKS_METRIC) for g in gateways)
        now = time.monotonic()
        if first is None and acked > 0:
            first = now
        if acked >= backlog:
            done = now
        time.sleep(0.1)
    assert first is not None
    window = done - first
    rows = pg_rows(
        harness.pg_url,
        "SELECT count(*) AS n, extract(epoch FROM max(at) - min(at)) AS span FROM cluster_commits WHERE at >= %s",
        (dt.datetime.fromtimestamp(launched, tz=dt.UTC),),
    )
    if rows and int(rows[0]["n"]) >= 2 and rows[0]["span"] is not None:
        window = float(rows[0]["span"])
    return backlog / max(window, 1e-3)


def _stop(harness: ClusterHarness, members: list[str]) -> None:
    for member in members:
        gateway = harness.gateway(member)
        if gateway.running:
            gateway.sigterm()
    for member in members:
        gateway = harness.gateway(member)
        if gateway.proc is not None:
            gateway.wait_exit(timeout=60)


def measure(workdir: Path, *, readings: int, counts: list[int], notes: list[str]) -> dict[int, float]:
    harness = ClusterHarness(workdir)
    code, output = check_config(harness.write_configs()["gw-a"])
    if code != 0:
        why = "cluster mode is not wired into firegrid run" if cluster_section_rejected(output) else "config refused"
        raise BenchError(f"{why}: firegrid check-config said {output!r}")
    rates: dict[int, float] = {}
    try:
        harness.start_services()
        harness.write_configs()
        harness.start_watcher()
        for n in counts:
            members = list(MEMBERS[:n])
            try:
                harness.start_gateways(members, timeout=120)
                harness.wait_cluster_ready(timeout=120, spread=True)
            except (HarnessError, AssertionError) as exc:
                raise BenchError(f"{n} gateways did not take the partitions: {exc}") from exc
            _stop(harness, members)
            backlog = _publish_backlog(harness, readings)
            rates[n] = _drain(harness, members, backlog)
            _stop(harness, members)
            notes.append(f"{n} gateway(s): {backlog} readings drained at {rates[n]:.0f} readings/s")
    finally:
        harness.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--readings", type=int, default=None, help="backlog per N (default 30000, quick 4000)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    readings = args.readings or (4000 if args.quick else 30_000)
    counts = [1, 2, 3]
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        try:
            rates = measure(args.workdir or Path(tmp), readings=readings, counts=counts, notes=notes)
        except BenchError as exc:
            print(f"bench.cluster: not measured: {exc}", file=sys.stderr)
            emit("cluster", [], as_json=args.json, quick=args.quick, notes=[f"not measured: {exc}"])
            return 2
    one = rates[1]
    figures = [
        Figure(
            name=f"cluster.readings_per_s@{n}",
            label=f"{n} gateway{'s' if n > 1 else ''}, readings/s committed end to end through NATS",
            value=rates[n],
            unit="readings/s",
            baseline=None if n == 1 else one,
            baseline_label=None if n == 1 else "1 gateway",
        )
        for n in counts
    ]
    emit(
        "cluster",
        figures,
        as_json=args.json,
        quick=args.quick,
        notes=notes,
        conditions={"buildings": 120, "devices": 1200, "partitions": 16, "nats_nodes": 3, "backlog": readings},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
