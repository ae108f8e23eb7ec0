"""Bench: does ``firegrid simulate --rate R`` hold its rate?

Starts a private Mosquitto, a counting paho subscriber (in this process) and the load generator as a separate
process (``firegrid simulate --rate 2000 --duration 60`` over 100,000 generated devices), then prints the rate the
generator reports, the rate the subscriber saw, the per-second spread and the deviation from the target.
Nothing is asserted: the figures are printed.

    .venv/bin/python bench/simulate.py            # 2,000 msg/s for 60 s, QoS 1
    .venv/bin/python bench/simulate.py --quick    # 5 s
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testkit.services import MosquittoServer  # noqa: E402


class Counter:
    def __init__(self, port: int, qos: int) -> None:
        self.count = 0
        self.first: float | None = None
        self.last: float | None = None
        self.per_second: dict[int, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-counter", clean_session=True)
        self.client.on_connect = lambda c, *_: c.subscribe("firegrid/#", qos=qos)
        self.client.on_subscribe = lambda *_: self._ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._ready.wait(10):
            raise RuntimeError("subscriber did not get SUBACK")

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        with self._lock:
            self.count += 1
            if self.first is None:
                self.first = now
            self.last = now
            second = int(now - self.first)
            self.per_second[second] = self.per_second.get(second, 0) + 1

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s instead of 60 s")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line (bench/run.py)")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--buildings", type=int, default=2000)
    parser.add_argument("--devices-per-building", type=int, default=50)
    args = parser.parse_args(argv)
    duration = args.duration or (5.0 if args.quick else 60.0)
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        broker = MosquittoServer(workdir=Path(tmp) / "mosquitto", persistence=False).start()
        try:
            counter = Counter(broker.port, args.qos)
            command = [
                sys.executable,
                "-m",
                "gateway.tools.cli",
                "simulate",
                "--buildings",
                str(args.buildings),
                "--devices-per-building",
                str(args.devices_per_building),
                "--rate",
                str(args.rate),
                "--duration",
                f"{duration}s",
                "--qos",
                str(args.qos),
                "--broker",
                broker.url,
                "--seed",
                "1",
                "--quiet",
            ]
            started = time.monotonic()
            proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ}, check=False)
            wall = time.monotonic() - started
            expected = int(args.rate * duration)
            deadline = time.monotonic() + 10
            while counter.count < expected and time.monotonic() < deadline:
                time.sleep(0.05)
            counter.stop()
        finally:
            broker.stop()
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        print(f"generator failed with exit code {proc.returncode}")
        return 1
    window = (counter.last or 0) - (counter.first or 0)
    received_rate = (counter.count - 1) / window if window > 0 else 0.0
    seconds = [counter.per_second.get(s, 0) for s in range(int(window) + 1)]
    full = seconds[1:-1] or seconds
    deviation = abs(received_rate - args.rate) / args.rate * 100
    worst = max(abs(n - args.rate) / args.rate * 100 for n in full) if full else 0.0
    devices = args.buildings * args.devices_per_building
    print(
        f"bench/simulate: {devices:,} simulated devices, target {args.rate:,.0f} msg/s for {duration:g}s, "
        f"QoS {args.qos}, one generator process (wall {wall:.1f}s incl. start-up)"
    )
    print(f"  generator: {proc.stdout.strip()}")
    print(
        f"  subscriber received {counter.count:,}/{expected:,} ({counter.count / expected * 100:.2f} %) "
        f"at {received_rate:,.1f} msg/s: {deviation:.2f} % off target"
    )
    print(
        f"  per-second received: min {min(full):,} max {max(full):,} (worst second {worst:.2f} % off); "
        f"{'WITHIN' if deviation <= 5 else 'OUTSIDE'} 5 % overall"
    )
    if args.json:
        from bench.common import Figure, emit

        emit(
            "simulate",
            [
                Figure(
                    name="simulate.rate_msg_s",
                    value=received_rate,
                    unit="msg/s",
                    label=f"Load mode rate held ({devices:,} devices, QoS {args.qos})",
                    baseline=args.rate,
                    baseline_label="target rate",
                    goal="within 5 % of target",
                    goal_on="ratio",
                    goal_min=0.95,
                    goal_max=1.05,
                ),
                Figure(
                    name="simulate.worst_second_pct",
                    value=worst,
                    unit="% off target",
                    better="lower",
                    label="Worst full second",
                ),
                Figure(
                    name="simulate.delivered_pct",
                    value=counter.count / expected * 100,
                    unit="%",
                    label="Messages delivered to the subscriber",
                ),
            ],
            as_json=True,
            quick=args.quick,
            conditions={"rate": args.rate, "duration_s": duration, "qos": args.qos, "devices": devices},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
