"""Bench: catching up after an outage — the gateway was down while devices kept publishing.

``firegrid run`` starts once (so the broker holds its persistent session and QoS 1 subscriptions) and stops; while it
is down the devices publish what ``--down-minutes`` at ``--live-rate`` readings/s would have produced (10 minutes at
1,000/s: 600,000 readings), with fire alarms at evenly spaced points of the backlog.  Publishing happens as fast as
the broker accepts it (the broker queues for the offline session); then the gateway starts again and the bench
measures:

* how fast the backlog drains into InfluxDB, as a multiple of the live rate (goal: at least 5×);
* how long until alerts are current again: until the webhook of the last fire alarm in the backlog arrived,
  next to the time the telemetry took to drain (a fire must not wait for telemetry writes).

    python -m bench.backlog                 # 10 min at 1,000/s of backlog
    python -m bench.backlog --quick         # 20 s at 1,000/s
"""

from __future__ import annotations

import contextlib
import itertools
import math
import tempfile
import time
from pathlib import Path

from bench.common import (
    BenchError,
    Community,
    Figure,
    FiregridProcess,
    Publisher,
    RawPublisher,
    RssSampler,
    bench_parser,
    emit,
    firegrid_config,
    first_arrival_by_key,
    percentile,
    services,
    wait_until,
)
from testkit.webhooks import ThreadedReceiver

RUNS = 1  # one full run publishes and drains 600,000 readings; three would not fit in make bench's 15 minutes
TIMEOUT_S = 420


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--down-minutes", type=float, default=None, help="default 10 (quick: 1/3)")
    parser.add_argument("--live-rate", type=float, default=1000.0)
    parser.add_argument("--alarms", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    down_min = args.down_minutes if args.down_minutes is not None else (1 / 3 if args.quick else 10.0)
    backlog = int(down_min * 60 * args.live_rate)
    community = Community(n_devices=1000, n_buildings=50, n_alarms=args.alarms + 1)
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        base = args.workdir or Path(tmp)
        try:
            figures, notes = _run(
                base, community=community, backlog=backlog, live_rate=args.live_rate, alarms=args.alarms
            )
        except BenchError as exc:
            emit("backlog", [], as_json=args.json, quick=args.quick, notes=[f"not measured: {exc}"])
            return 2
    conditions = {
        "down_minutes": round(down_min, 2),
        "live_rate": args.live_rate,
        "backlog_readings": backlog,
        "alarms_in_backlog": args.alarms,
        "devices": community.n_devices,
    }
    emit("backlog", figures, as_json=args.json, quick=args.quick, notes=notes, conditions=conditions)
    return 0


def _run(
    base: Path, *, community: Community, backlog: int, live_rate: float, alarms: int
) -> tuple[list[Figure], list[str]]:
    notes: list[str] = []
    with services(base / "services") as svc, ThreadedReceiver() as receiver:
        config = firegrid_config(
            broker_port=svc.broker.port,
            influx_url=svc.influx.url,
            workdir=base / "firegrid",
            buildings=community.buildings(),
            devices=community.devices(),
            webhook=receiver,
        )
        gateway = FiregridProcess(config=config, workdir=base / "firegrid")
        gateway.start()  # creates the persistent session and its subscriptions
        with Publisher(port=svc.broker.port, client_id="bench-alarms", max_outstanding=50) as alarm_pub:
            # Warm-up alarm 0: the path works before we take the gateway down.
            topic, payload = community.alarm(0)
            alarm_pub.publish(topic, payload, mark=community.alarm_device(0))
            wait_until(
                lambda: bool(first_arrival_by_key(receiver.arrivals, [community.alarm_device(0)])),
                timeout=60,
                what="the warm-up alarm's webhook",
            )
            gateway.stop()

            # The outage: the backlog, with alarms at evenly spaced points of it.
            keys = [community.alarm_device(i) for i in range(1, alarms + 1)]
            telemetry = community.telemetry()
            publish_start = time.monotonic()
            with RawPublisher(port=svc.broker.port, client_id="bench-load", max_outstanding=1000) as load:
                chunk = backlog // (alarms + 1)
                for i in range(1, alarms + 2):
                    n = chunk if i <= alarms else backlog - chunk * alarms
                    load.run_paced(itertools.islice(telemetry, n), rate=None)
                    if i <= alarms:
                        topic, payload = community.alarm(i)
                        alarm_pub.publish(topic, payload, mark=community.alarm_device(i))
                load.wait_acked(timeout=120)
            alarm_pub.wait_acked(timeout=30)
            publish_s = time.monotonic() - publish_start
            expected = backlog + alarms + 1

            # Back up: drain.
            restart_at = time.monotonic()
            gateway.start(timeout=180)
            ready_at = time.monotonic()
            drained_at = math.nan
            trace: list[tuple[float, int]] = []  # (monotonic s, readings in InfluxDB)
            last, last_change = -1, time.monotonic()
            with RssSampler(gateway.pid) as rss:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline:
                    try:
                        count = svc.influx.count("smoke", "obscuration")
                    except Exception:
                        count = last
                    now = time.monotonic()
                    trace.append((now, count))
                    if count != last:
                        last, last_change = count, now
                    if count >= expected:
                        drained_at = now
                        break
                    if now - last_change > 15:
                        break
                    time.sleep(0.25)
                with contextlib.suppress(BenchError):  # a missing alarm is reported below, not raised
                    wait_until(
                        lambda: len(first_arrival_by_key(receiver.arrivals, keys)) == len(keys),
                        timeout=max(5.0, deadline - time.monotonic()),
                        what="the backlog's alarm webhooks",
                    )
            gateway.stop()
        arrived = first_arrival_by_key(receiver.arrivals, keys)
        restart_ns = int(restart_at * 1e9)
        # time.monotonic() and monotonic_ns() share a clock; arrivals are monotonic_ns.
        alarm_s = [(arrived[k] - restart_ns) / 1e9 for k in keys if k in arrived]
        # Was a fire stuck behind telemetry writes?  For each backlog alarm: when did InfluxDB hold every reading
        # published before it, compared with when its webhook arrived.  Positive lead: the alarm was out first.
        leads: list[float] = []
        for i, key in enumerate(keys, start=1):
            if key not in arrived:
                continue
            before_it = 1 + i * chunk + (i - 1)  # warm-up alarm, telemetry chunks, earlier alarms
            written = next((t for t, c in trace if c >= before_it), math.nan)
            if not math.isnan(written):
                leads.append(written - arrived[key] / 1e9)
        drain_s = drained_at - restart_at
        drain_rate = backlog / (drained_at - restart_at) if not math.isnan(drained_at) else math.nan
        if math.isnan(drained_at):
            notes.append(f"backlog did not fully drain: {max(last, 0):,} of {expected:,} readings in InfluxDB")
        if len(arrived) < len(keys):
            notes.append(f"{len(keys) - len(arrived)} of {len(keys)} backlog alarms never produced a webhook")
        notes.append(
            f"backlog published in {publish_s:.1f} s; gateway ready {ready_at - restart_at:.1f} s after restart"
        )
        figures = [
            Figure(
                name="backlog.drain_rate",
                label="backlog drain rate",
                value=drain_rate,
                unit="readings/s",
                baseline=live_rate,
                baseline_label="live rate",
                goal=">= 5x live rate",
                goal_on="ratio",
                goal_min=5.0,
            ),
            Figure(
                name="backlog.drain_s",
                label="telemetry drained into InfluxDB after restart",
                value=drain_s,
                unit="s",
                better="lower",
            ),
            Figure(
                name="backlog.alerts_current_s",
                label="last backlog alarm's webhook after restart",
                value=max(alarm_s) if alarm_s else math.nan,
                unit="s",
                better="lower",
                baseline=drain_s if not math.isnan(drain_s) else None,
                baseline_label="telemetry drain",
            ),
            Figure(
                name="backlog.alarm_lead_s",
                label="backlog alarm's webhook ahead of the telemetry before it in InfluxDB, median",
                value=percentile(leads, 50),
                unit="s",
                goal="> 0 (not stuck behind writes)",
                goal_min=0.0,
            ),
            Figure(
                name="backlog.first_alarm_s",
                label="first backlog alarm's webhook after restart",
                value=min(alarm_s) if alarm_s else math.nan,
                unit="s",
                better="lower",
            ),
            Figure(
                name="backlog.lost_readings",
                label="backlog readings lost",
                value=float(max(0, expected - max(last, 0))),
                unit=f"of {expected:,}",
                better="lower",
                goal="0",
                goal_max=0,
            ),
            Figure(
                name="backlog.rss_peak_mb", label="RSS peak while draining", value=rss.peak, unit="MiB", better="lower"
            ),
        ]
    return figures, notes


if __name__ == "__main__":
    raise SystemExit(main())
