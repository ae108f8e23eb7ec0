"""Bench: the rules core alone — readings/s through the engine with the shipped default rules, and memory per device.

A synthetic district: buildings of 50 devices (60 % smoke, 16 % heat, 20 % extinguishers, 4 % call points), every
device reporting once a minute with realistic normal values, and 0.1 % of smoke samples in alarm (so raises, the
correlation and the evidence path are part of the cost).  The engine is ticked every 1,000 readings, as the gateway
ticks it.  Measured for 10,000 and 100,000 devices.

Baseline, in the same run: a bare loop over the same readings that does what any rules engine must at least do —
find the device's state in a dict and look each metric up in a dict of limits.  The ratio says how much the real
rules (hysteresis, timers, rate-of-rise windows, absence) cost on top.

Memory per device: ``tracemalloc`` of the engine after every device has been seen (registry adopted, one reading
each, rate-of-rise windows filled), divided by the device count.

    python -m bench.rules [--quick] [--json]
"""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from collections.abc import Callable

from bench.common import Figure, bench_parser, emit
from rules.engine import Engine
from rules.loader import DEFAULTS_PATH, read_rules_file
from rules.ruleset import RuleSet
from rules.types import DeviceRef, Reading

T0 = 1_800_000_000_000
PER_BUILDING = 50
MIX = ["smoke"] * 30 + ["heat"] * 8 + ["extinguisher"] * 10 + ["call_point"] * 2


def district(devices: int) -> dict[str, DeviceRef]:
    registry: dict[str, DeviceRef] = {}
    for i in range(devices):
        building = f"b{i // PER_BUILDING:05d}"
        kind = MIX[i % PER_BUILDING]
        floor = 1 + (i % PER_BUILDING) // 5
        device = f"{building}-{kind[:2]}-{i % PER_BUILDING:02d}"
        registry[device] = DeviceRef(building, device, kind, floor, f"g{i // 5000:02d}")
    return registry


def readings(registry: dict[str, DeviceRef], count: int, *, seed: int = 1, start: int = T0) -> list[Reading]:
    """``count`` readings round-robin over the devices, each device once a minute, from ``start``."""
    rnd = random.Random(seed)
    refs = list(registry.values())
    step_ms = max(1, 60_000 // len(refs))
    out: list[Reading] = []
    temps = {r.device: 22.0 + rnd.random() * 4 for r in refs if r.kind == "heat"}
    for i in range(count):
        ref = refs[i % len(refs)]
        ts = start + i * step_ms
        if ref.kind == "smoke":
            alarm = rnd.random() < 0.001
            values: dict[str, float | bool] = {
                "obscuration": 4.0 if alarm else round(rnd.random() * 0.3, 2),
                "alarm": alarm,
                "battery": 80.0,
                "rssi": -70.0,
            }
        elif ref.kind == "heat":
            temps[ref.device] += rnd.uniform(-0.2, 0.2)
            values = {"celsius": round(temps[ref.device], 2), "battery": 77.0, "rssi": -71.0}
        elif ref.kind == "extinguisher":
            values = {"pressure_mpa": 1.2, "present": True, "obstructed": False, "battery": 90.0}
        else:
            values = {"battery": 95.0, "rssi": -65.0}
        out.append(Reading(ref, ts, values, seq=i))
    return out


def run_engine(engine: Engine, batch: list[Reading]) -> float:
    """Seconds to push ``batch`` through the engine, ticking every 1,000 readings."""
    process = engine.process
    tick = engine.tick
    start = time.perf_counter()
    for i, reading in enumerate(batch):
        if not i % 1000:
            tick(reading.ts_ms)
        process(reading)
    return time.perf_counter() - start


def run_baseline(registry: dict[str, DeviceRef], batch: list[Reading]) -> float:
    """The floor: a dict lookup for the device's state and one per metric, nothing else."""
    states: dict[str, dict[str, float]] = {device: {} for device in registry}
    limits = {"obscuration": 3.0, "celsius": 57.0, "pressure_mpa": 1.4, "battery": 20.0}
    hits = 0
    start = time.perf_counter()
    for reading in batch:
        state = states[reading.ref.device]
        for metric, value in reading.values.items():
            limit = limits.get(metric)
            if limit is not None and value >= limit:
                hits += 1
                state[metric] = value
    elapsed = time.perf_counter() - start
    assert hits >= 0
    return elapsed


def best_of(runs: int, fn: Callable[[], float]) -> float:
    return min(fn() for _ in range(runs))


def bytes_per_device(rule_set: RuleSet, registry: dict[str, DeviceRef], warm: list[Reading]) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    engine = Engine(rule_set, registry=registry)
    engine.tick(T0)
    for reading in warm:
        engine.process(reading)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del engine
    return (after - before) / len(registry)


def measure(rule_set: RuleSet, devices: int, count: int, runs: int) -> tuple[float, float, float, int]:
    registry = district(devices)
    batch = readings(registry, count)
    # memory: every device seen several times (heat detectors' rate-of-rise windows filled)
    warm = readings(registry, devices * 3, seed=2)
    per_device = bytes_per_device(rule_set, registry, warm)

    # first sight (plans compiled, states created) is not timed: one reading per device, before the timed ones
    first_sight = readings(registry, devices, seed=3, start=T0 - 2 * 60_000 - devices)

    def one_engine_run() -> float:
        engine = Engine(rule_set, registry=registry)
        engine.tick(first_sight[0].ts_ms)
        run_engine(engine, first_sight)
        return run_engine(engine, batch)

    engine_s = best_of(runs, one_engine_run)
    base_s = best_of(runs, lambda: run_baseline(registry, batch))
    return count / engine_s, count / base_s, per_device, len(batch)


def main(argv: list[str] | None = None) -> int:
    args = bench_parser(__doc__ or "").parse_args(argv)
    rule_set = RuleSet(
        rules=read_rules_file(DEFAULTS_PATH),
        heartbeat_s_by_kind={"smoke": 300, "heat": 300, "extinguisher": 300, "call_point": 300},
    )
    sizes = [(10_000, 100_000 if args.quick else 500_000), (100_000, 200_000 if args.quick else 500_000)]
    runs = 1 if args.quick else 3
    figures: list[Figure] = []
    notes: list[str] = []
    for devices, count in sizes:
        rate, base, per_device, n = measure(rule_set, devices, count, runs)
        figures.append(
            Figure(
                name=f"rules.readings_per_s@{devices}",
                label=f"Rules core, {devices:,} devices, default rules",
                value=rate,
                unit="readings/s",
                baseline=base,
                baseline_label="bare dict-lookup loop",
                goal=">= 200,000 readings/s",
                goal_on="value",
                goal_min=200_000,
            )
        )
        figures.append(
            Figure(
                name=f"rules.bytes_per_device@{devices}",
                label=f"Rules state per device, {devices:,} devices",
                value=per_device,
                unit="bytes",
                better="lower",
                goal="< 2 KB per device",
                goal_on="value",
                goal_max=2048,
            )
        )
        notes.append(f"{devices:,} devices: {n:,} readings, best of {runs}; baseline {base:,.0f}/s")
    emit(
        "rules",
        figures,
        as_json=args.json,
        quick=args.quick,
        notes=notes,
        conditions={"per_building": PER_BUILDING, "tick_every": 1000, "best_of": runs},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
