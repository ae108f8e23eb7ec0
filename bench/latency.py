"""Bench: alert latency, device publish → signed webhook received, under steady load and inside a burst.

Background: ``n_devices`` smoke detectors publish normal readings (QoS 1) at 0, 1,000, 5,000 and 10,000 readings/s;
during each steady phase a second client publishes alarms (a detector's own ``alarm: true`` with obscuration far over
the threshold), each from a detector that alarms once, so each alarm is a fresh ``alert.raised``.  The clock starts
when the alarm is handed to paho and stops when the bench's aiohttp receiver has read a webhook, with a valid
Standard Webhooks signature, that names the detector.  Then a burst of 50,000 readings is published as fast as the
broker takes them, with alarms injected at evenly spaced points of it: they must not queue behind the telemetry.
For firegrid, half of them are told by the detector's ``alarm`` EVENT (then its alarm telemetry), which travels on the
gateway's fast lane (``mqtt.event_lane``); the burst is then run again against the one-lane build
(``mqtt.event_lane: false``) in the same run, the baseline of the event's latency.

The same plan drives the Node-RED peer (bench/peer_nodered.py); :func:`run_plan` takes any :class:`System`.

    python -m bench.latency            # 0/1k/5k/10k readings/s for 6 s each + a 50,000 burst
    python -m bench.latency --quick    # 0/1k for 2 s + a 5,000 burst
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    BenchError,
    Community,
    Figure,
    FiregridProcess,
    Publisher,
    RawPublisher,
    RssSampler,
    Services,
    bench_parser,
    emit,
    firegrid_config,
    first_arrival_by_key,
    paced_in_thread,
    percentile,
    services,
    wait_until,
)
from testkit.webhooks import ThreadedReceiver

RUNS = 3
TIMEOUT_S = 240


class System(Protocol):
    """A system under test: consumes the community's MQTT topics, writes InfluxDB, posts signed webhooks."""

    label: str

    def start(self, *, svc: Services, receiver: ThreadedReceiver, community: Community, workdir: Path) -> None: ...

    def stop(self) -> None: ...

    def kill(self) -> None: ...

    def restart(self) -> None: ...

    @property
    def pid(self) -> int: ...


@dataclass
class FiregridSystem:
    """``firegrid run`` with a generated config: the community registered, default rules, one webhook."""

    label: str = "firegrid"
    mqtt_protocol: str | None = None  # None: the config's default
    event_lane: bool = True  # False: the one-lane build (one MQTT session for every channel)
    gateways: int = 1  # > 1: the district split by building over that many processes (mqtt.buildings)
    process: FiregridProcess | None = None  # the first gateway (RSS, diagnostics)
    processes: list[FiregridProcess] = field(default_factory=list)
    ready_s: float = math.nan

    def start(self, *, svc: Services, receiver: ThreadedReceiver, community: Community, workdir: Path) -> None:
        buildings = community.buildings()
        for i in range(self.gateways):
            where = workdir if self.gateways == 1 else workdir / f"gw{i}"
            config = firegrid_config(
                broker_port=svc.broker.port,
                influx_url=svc.influx.url,
                workdir=where,
                buildings=buildings,
                devices=community.devices(),
                webhook=receiver,
                mqtt_protocol=self.mqtt_protocol,
                client_id=f"firegrid-bench-{i}" if self.gateways > 1 else "firegrid-bench",
            )
            config["mqtt"]["event_lane"] = self.event_lane
            if self.gateways > 1:
                config["mqtt"]["buildings"] = [b["id"] for b in buildings[i :: self.gateways]]
            self.processes.append(FiregridProcess(config=config, workdir=where).start())
        self.process = self.processes[0]
        self.ready_s = max(p.ready_after_s for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def kill(self) -> None:
        for process in self.processes:
            process.kill()

    def restart(self) -> None:
        for process in self.processes:
            process.start()

    def diagnostics(self) -> str:
        """Non-zero rejection, spool and dead-letter metrics: why readings did not reach InfluxDB."""
        assert self.process is not None
        try:
            with urllib.request.urlopen(self.process.http_base + "/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            return f"/metrics unavailable ({exc})"
        wanted = ("reject", "spool", "dead", "dropped", "duplicate", "readings_total", "influx_write_failures")
        lines = [
            line
            for line in text.splitlines()
            if line
            and not line.startswith("#")
            and any(w in line for w in wanted)
            and not any(noise in line for noise in ("_bucket", "_created", "_sum", "_count"))
            and not line.endswith(" 0.0")
        ]
        return "; ".join(lines[:15]) or "no non-zero rejection/spool metrics"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid


@dataclass(frozen=True)
class Plan:
    rates: tuple[int, ...] = (0, 1000, 5000, 10_000)
    phase_s: float = 6.0
    alarms_per_phase: int = 20
    burst: int = 50_000
    burst_alarms: int = 10
    burst_events: int = 0  # alarms in the burst told by an `alarm` event first (firegrid's fast lane)
    alarm_timeout_s: float = 20.0  # an alarm later than this after its phase is counted lost
    drain_timeout_s: float = 60.0
    stall_s: float = 15.0  # InfluxDB's count unchanged this long: what is missing is counted lost
    crash: int = 0  # > 0: readings of a second burst in whose middle the system is SIGKILLed and restarted
    profile_s: float = 15.0  # with --profile: how long py-spy samples, from the start of the burst

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            rates=(0, 1000), phase_s=2.0, alarms_per_phase=4, burst=5000, burst_alarms=4, drain_timeout_s=20, stall_s=5
        )

    @property
    def n_alarms(self) -> int:
        return 1 + len(self.rates) * self.alarms_per_phase + self.burst_alarms + self.burst_events  # 1: the warm-up


@dataclass
class PhaseResult:
    name: str
    target_rate: float | None
    achieved_rate: float
    alarms_sent: int
    latencies_ms: list[float]
    splits_ms: list[tuple[float, float]] = field(default_factory=list)
    tag: str | None = None  # the figures' phase tag when not derived from the rate ("burst_event")

    @property
    def lost_alarms(self) -> int:
        return self.alarms_sent - len(self.latencies_ms)

    def pct(self, p: float) -> float:
        return percentile(self.latencies_ms, p)

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_ms) if self.latencies_ms else math.nan


@dataclass
class PlanResult:
    system: str
    phases: list[PhaseResult] = field(default_factory=list)
    telemetry_published: int = 0
    telemetry_stored: int = 0
    burst_throughput: float = math.nan  # readings/s from the burst's first publish to its last point in InfluxDB
    burst_publish_rate: float = math.nan
    rss_peak_mb: float = math.nan
    ready_s: float = math.nan
    notes: list[str] = field(default_factory=list)
    drain_trace: list[tuple[float, int]] = field(default_factory=list)  # (s since burst start, points in InfluxDB)
    crash_lost: int | None = None  # readings lost to a SIGKILL mid-burst (None: not measured)

    @property
    def lost_telemetry(self) -> int:
        return max(0, self.telemetry_published - self.telemetry_stored)


def _stored(svc: Services) -> int:
    with contextlib.suppress(Exception):
        return svc.influx.count("smoke", "obscuration")
    return -1


def _wait_alarms(receiver: ThreadedReceiver, keys: Sequence[str], timeout: float) -> None:
    wanted = set(keys)
    needles = {k: f'"{k}"'.encode() for k in wanted}

    def all_in() -> bool:
        seen = {k for k, n in needles.items() for a in list(receiver.arrivals) if n in a.body}
        return seen >= wanted

    with contextlib.suppress(BenchError):
        wait_until(all_in, timeout=timeout, interval=0.1, what="alarm webhooks")


def _latencies(receiver: ThreadedReceiver, alarms: Publisher, keys: Sequence[str]) -> list[float]:
    arrived = first_arrival_by_key(list(receiver.arrivals), keys)
    return [(arrived[k] - alarms.sent_at[k]) / 1e6 for k in keys if k in arrived and k in alarms.sent_at]


def _splits(receiver: ThreadedReceiver, keys: Sequence[str]) -> list[tuple[float, float]]:
    """Where the time went, for a system whose webhook body carries ``data.ts_ms`` (the device's timestamp) and
    ``data.raised_ms`` (when the alert was stored): (device → alert stored, stored → webhook received) in ms, all
    three wall-clock readings taken on this machine."""
    out: list[tuple[float, float]] = []
    wanted = set(keys)
    for arrival in list(receiver.arrivals):
        try:
            data = json.loads(arrival.body).get("data", {})
        except ValueError:
            continue
        if (
            data.get("device") in wanted
            and isinstance(data.get("raised_ms"), int)
            and isinstance(data.get("ts_ms"), int)
        ):
            wanted.discard(data["device"])
            out.append((data["raised_ms"] - data["ts_ms"], arrival.wall_ms - data["raised_ms"]))
    return out


def _drain(
    svc: Services, *, expected: int, since: float, plan: Plan, trace: list[tuple[float, int]]
) -> tuple[int, float]:
    """Poll InfluxDB until ``expected`` readings are in, or its count stopped growing for ``plan.stall_s``;
    (count, monotonic time everything had landed or NaN)."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + plan.drain_timeout_s
    while time.monotonic() < deadline:
        count = _stored(svc)
        now = time.monotonic()
        trace.append((round(now - since, 2), count))
        if count != last:
            last, last_change = count, now
        if count >= expected:
            return count, now
        if now - last_change > plan.stall_s:
            break
        time.sleep(0.2)
    return max(last, 0), math.nan


def pyspy() -> str | None:
    """The py-spy binary, when installed (``pip install py-spy``; not a dependency): $FIREGRID_PYSPY or PATH."""
    return os.environ.get("FIREGRID_PYSPY") or shutil.which("py-spy")


def start_profile(pid: int, out: Path, *, seconds: float) -> subprocess.Popen[bytes] | None:
    """Sample ``pid`` with py-spy for ``seconds`` into ``out`` (collapsed stacks), or None without py-spy."""
    binary = pyspy()
    if binary is None:
        return None
    argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))), "--rate", "200"]
    argv += ["--format", "raw", "--nonblocking", "--threads", "--output", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, *, top: int = 15) -> str:
    """The hottest frames of a py-spy collapsed-stack file: self time and inclusive time, in % of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")[1:]  # the first frame names the thread
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return "no samples"
    out = [f"{total} samples", "self:"]
    out += [f"  {n / total:6.1%}  {frame}" for frame, n in own.most_common(top)]
    out.append("inclusive:")
    out += [f"  {n / total:6.1%}  {frame}" for frame, n in inclusive.most_common(top + 10)]
    return "\n".join(out)


def run_plan(
    system: System, plan: Plan, *, community: Community, workdir: Path, profile: Path | None = None
) -> PlanResult:
    """Fresh broker and InfluxDB, start the system, warm up with one alarm, then the steady phases, the burst and
    (when ``plan.crash``) a SIGKILL in the middle of a second burst."""
    result = PlanResult(system=system.label)
    next_alarm = 0

    def take_alarms(n: int) -> list[int]:
        nonlocal next_alarm
        out = list(range(next_alarm, next_alarm + n))
        next_alarm += n
        return out

    with services(workdir / "services") as svc, ThreadedReceiver() as receiver:
        system.start(svc=svc, receiver=receiver, community=community, workdir=workdir / system.label)
        try:
            result.ready_s = float(getattr(system, "ready_s", math.nan))
            with (
                RawPublisher(port=svc.broker.port, client_id="bench-load", max_outstanding=1000) as load,
                Publisher(port=svc.broker.port, client_id="bench-alarms", max_outstanding=100) as alarms,
            ):
                with RssSampler(system.pid) as rss:
                    # Warm-up: the first alarm proves the whole path (subscription, rules, webhook) is live.
                    # Repeated every 5 s until it arrives: a system that reports ready a moment before its
                    # subscription is active would otherwise miss it (a repeat is harmless: only the path is tested).
                    (warm,) = take_alarms(1)
                    topic, payload = community.alarm(warm)
                    for _attempt in range(12):
                        alarms.publish(topic, payload, mark=community.alarm_device(warm))
                        _wait_alarms(receiver, [community.alarm_device(warm)], 5.0)
                        if first_arrival_by_key(receiver.arrivals, [community.alarm_device(warm)]):
                            break
                    if not first_arrival_by_key(receiver.arrivals, [community.alarm_device(warm)]):
                        raise BenchError(f"{system.label}: the warm-up alarm produced no signed webhook within 60 s")
                    telemetry = community.telemetry()
                    published = 0
                    for rate in plan.rates:
                        ids = take_alarms(plan.alarms_per_phase)
                        achieved, sent = _steady_phase(
                            load=load,
                            alarms=alarms,
                            telemetry=telemetry,
                            community=community,
                            rate=rate,
                            duration_s=plan.phase_s,
                            alarm_ids=ids,
                        )
                        published += sent
                        keys = [community.alarm_device(i) for i in ids]
                        _wait_alarms(receiver, keys, plan.alarm_timeout_s)
                        result.phases.append(
                            PhaseResult(
                                name=f"steady {rate}/s",
                                target_rate=rate,
                                achieved_rate=achieved,
                                alarms_sent=len(ids),
                                latencies_ms=_latencies(receiver, alarms, keys),
                                splits_ms=_splits(receiver, keys),
                            )
                        )
                    # Burst: telemetry as fast as the broker accepts it, alarms injected at evenly spaced points.
                    ids = take_alarms(plan.burst_alarms)
                    keys = [community.alarm_device(i) for i in ids]
                    event_ids = take_alarms(plan.burst_events)
                    event_keys = [community.alarm_device(i) for i in event_ids]
                    # (where in the burst, alarm id, told by an event first): both kinds evenly spread, interleaved
                    injections = sorted(
                        [((k + 1) * plan.burst // (len(ids) + 1), a, False) for k, a in enumerate(ids)]
                        + [
                            ((2 * k + 1) * plan.burst // (2 * len(event_ids) + 2), a, True)
                            for k, a in enumerate(event_ids)
                        ]
                    )
                    before = load.stats.sent
                    spy = start_profile(system.pid, profile, seconds=plan.profile_s) if profile else None
                    burst_start = time.monotonic()
                    # The same generator continues: fresh seq numbers, so no reading is a replay of an earlier one.
                    thread, _stop, _stats = paced_in_thread(load, itertools.islice(telemetry, plan.burst), rate=None)
                    for at, alarm_id, by_event in injections:
                        while load.stats.sent - before < at and thread.is_alive():
                            time.sleep(0.001)
                        if by_event:
                            # the event, then the same detector's alarm telemetry (stored like every alarm reading)
                            topic, payload = community.alarm_event(alarm_id)
                            alarms.publish(topic, payload, mark=community.alarm_device(alarm_id))
                            topic, payload = community.alarm(alarm_id)
                            alarms.publish(topic, payload)
                        else:
                            topic, payload = community.alarm(alarm_id)
                            alarms.publish(topic, payload, mark=community.alarm_device(alarm_id))
                    thread.join()
                    publish_s = time.monotonic() - burst_start
                    if profile is not None and spy is None:
                        result.notes.append("no profile: py-spy is not installed (pip install py-spy)")
                    published += plan.burst
                    result.burst_publish_rate = plan.burst / publish_s if publish_s > 0 else math.nan
                    expected = published + next_alarm  # every alarm reading is stored too
                    result.telemetry_published = expected
                    stored, landed_at = _drain(
                        svc, expected=expected, since=burst_start, plan=plan, trace=result.drain_trace
                    )
                    result.telemetry_stored = stored
                    if not math.isnan(landed_at):
                        result.burst_throughput = plan.burst / (landed_at - burst_start)
                    else:
                        result.notes.append(
                            f"{system.label}: {result.lost_telemetry:,} of {expected:,} readings not in InfluxDB "
                            f"{plan.stall_s:.0f} s after its count stopped growing"
                        )
                        diagnose = getattr(system, "diagnostics", None)
                        if diagnose is not None:
                            result.notes.append(f"{system.label} diagnostics: {diagnose()}")
                    _wait_alarms(receiver, keys + event_keys, plan.alarm_timeout_s)
                    result.phases.append(
                        PhaseResult(
                            name=f"burst {plan.burst}",
                            target_rate=None,
                            achieved_rate=result.burst_publish_rate,
                            alarms_sent=len(ids),
                            latencies_ms=_latencies(receiver, alarms, keys),
                            splits_ms=_splits(receiver, keys),
                        )
                    )
                    if event_ids:
                        result.phases.append(
                            PhaseResult(
                                name=f"burst {plan.burst}, alarm event",
                                target_rate=None,
                                achieved_rate=result.burst_publish_rate,
                                alarms_sent=len(event_ids),
                                latencies_ms=_latencies(receiver, alarms, event_keys),
                                splits_ms=_splits(receiver, event_keys),
                                tag="burst_event",
                            )
                        )
                result.rss_peak_mb = rss.peak
                if spy is not None and profile is not None:
                    spy.wait(timeout=plan.profile_s + 30)
                    if profile.exists():
                        print(
                            f"[profile] {system.label} during the burst:\n{summarize_profile(profile)}", file=sys.stderr
                        )
                if plan.crash:
                    result.crash_lost = _crash_phase(
                        system, svc=svc, load=load, telemetry=telemetry, plan=plan, result=result
                    )
            if receiver.rejected:
                result.notes.append(f"{system.label}: {len(receiver.rejected)} webhooks failed verification")
        finally:
            system.stop()
    return result


def _crash_phase(
    system: System,
    *,
    svc: Services,
    load: RawPublisher,
    telemetry: Any,
    plan: Plan,
    result: PlanResult,
) -> int:
    """Publish ``plan.crash`` readings fast, SIGKILL the system when half are out, finish publishing (the broker
    queues for the persistent session), restart it and count what never reaches InfluxDB."""
    before = load.stats.sent
    thread, _stop, _stats = paced_in_thread(load, itertools.islice(telemetry, plan.crash), rate=None)
    while load.stats.sent - before < plan.crash // 2 and thread.is_alive():
        time.sleep(0.001)
    system.kill()
    thread.join()
    load.wait_acked(timeout=60)
    restart = time.monotonic()
    system.restart()
    # Every reading of the run must be in after the restart, not only the crash burst's: a reading that was still
    # waiting in the system when it was killed counts, whichever phase published it.
    expected = result.telemetry_published + plan.crash
    stored, _landed = _drain(svc, expected=expected, since=restart, plan=plan, trace=[])
    lost = max(0, expected - stored)
    if lost:
        result.notes.append(
            f"{system.label}: after a SIGKILL in the middle of a {plan.crash:,} burst and a restart, {lost:,} of the "
            f"run's {expected:,} readings never reached InfluxDB (acknowledged to the broker, never written)"
        )
    return lost


def _steady_phase(
    *,
    load: RawPublisher,
    alarms: Publisher,
    telemetry: Any,
    community: Community,
    rate: int,
    duration_s: float,
    alarm_ids: Sequence[int],
) -> tuple[float, int]:
    """Background telemetry at ``rate`` for ``duration_s`` with alarms spread over the phase; (achieved rate, sent)."""
    stats: list[Any] = []
    thread: threading.Thread | None = None
    if rate > 0:
        thread, _stop, stats = paced_in_thread(load, telemetry, rate=rate, duration_s=duration_s)
    start = time.monotonic()
    # Alarms from 20 % to 95 % of the phase, so they meet the load at its steady state.
    for k, alarm_id in enumerate(alarm_ids):
        at = start + duration_s * (0.2 + 0.75 * k / max(1, len(alarm_ids) - 1))
        delay = at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        topic, payload = community.alarm(alarm_id)
        alarms.publish(topic, payload, mark=community.alarm_device(alarm_id))
    if thread is not None:
        thread.join()
        return stats[0].rate, stats[0].sent
    remaining = duration_s - (time.monotonic() - start)
    if remaining > 0:
        time.sleep(remaining)
    return 0.0, 0


def plan_figures(result: PlanResult, *, prefix: str, plan: Plan) -> list[Figure]:
    """Figures of one system's plan: p50/p99/max per phase, loss, burst throughput, RSS."""
    figures: list[Figure] = []
    who = result.system
    for phase in result.phases:
        steady = phase.target_rate is not None
        rate = int(phase.target_rate or 0)
        tag = phase.tag or (f"{rate}" if steady else "burst")
        where = f"{rate:,}/s steady" if steady else f"in a {plan.burst:,} burst"
        goal_ms = 100.0 if steady and phase.target_rate == 10_000 else 1000.0 if not steady else None
        if phase.tag == "burst_event":
            where += ", told by an alarm event (the fast lane)"
            goal_ms = 250.0
        for pname, value in (("p50", phase.pct(50)), ("p99", phase.pct(99)), ("max", phase.worst_ms)):
            figures.append(
                Figure(
                    name=f"{prefix}.{pname}_ms@{tag}",
                    label=f"{who} alarm latency {pname}, {where}",
                    value=value,
                    unit="ms",
                    better="lower",
                    goal=f"< {goal_ms:.0f} ms" if goal_ms and pname == "p99" else None,
                    goal_max=goal_ms if goal_ms and pname == "p99" else None,
                )
            )
        if phase.splits_ms:
            for i, stage in enumerate(("to alert stored", "stored to webhook")):
                figures.append(
                    Figure(
                        name=f"{prefix}.{'stored' if i == 0 else 'delivery'}_p50_ms@{tag}",
                        label=f"{who} alarm p50 {stage}, {where}",
                        value=percentile([sp[i] for sp in phase.splits_ms], 50),
                        unit="ms",
                        better="lower",
                    )
                )
        figures.append(
            Figure(
                name=f"{prefix}.lost_alarms@{tag}",
                label=f"{who} alarms not delivered within {plan.alarm_timeout_s:.0f} s, {where}",
                value=float(phase.lost_alarms),
                unit=f"of {phase.alarms_sent}",
                better="lower",
                goal="0",
                goal_max=0,
            )
        )
        if steady and phase.target_rate:
            figures.append(
                Figure(
                    name=f"{prefix}.load_rate@{tag}",
                    label=f"{who} background load achieved, {where}",
                    value=phase.achieved_rate,
                    unit="readings/s",
                )
            )
    steady_ok = [
        int(ph.target_rate)
        for ph in result.phases
        if ph.target_rate
        and ph.achieved_rate >= 0.95 * ph.target_rate
        and ph.lost_alarms == 0
        and not math.isnan(ph.pct(99))
        and ph.pct(99) < 100.0
    ]
    figures += [
        Figure(
            name=f"{prefix}.sustained_rate",
            label=f"{who} highest steady load with alarm p99 < 100 ms",
            value=float(max(steady_ok, default=0)),
            unit="readings/s",
        ),
        Figure(
            name=f"{prefix}.burst_throughput",
            label=f"{who} burst drained into InfluxDB",
            value=result.burst_throughput,
            unit="readings/s",
        ),
        Figure(
            name=f"{prefix}.burst_publish_rate",
            label=f"{who} burst accepted by the broker (load generator)",
            value=result.burst_publish_rate,
            unit="readings/s",
        ),
        Figure(
            name=f"{prefix}.lost_readings",
            label=f"{who} readings missing from InfluxDB after the drain wait",
            value=float(result.lost_telemetry),
            unit=f"of {result.telemetry_published:,}",
            better="lower",
            goal="0",
            goal_max=0,
        ),
        *(
            [
                Figure(
                    name=f"{prefix}.crash_lost",
                    label=f"{who} readings lost to a SIGKILL in a {plan.crash:,} burst (and restart)",
                    value=float(result.crash_lost),
                    unit=f"of {result.telemetry_published + plan.crash:,}",
                    better="lower",
                    goal="0",
                    goal_max=0,
                )
            ]
            if result.crash_lost is not None
            else []
        ),
        Figure(
            name=f"{prefix}.rss_peak_mb",
            label=f"{who} peak RSS",
            value=result.rss_peak_mb,
            unit="MiB",
            better="lower",
            goal="< 100 MiB" if who == "firegrid" else None,
            goal_max=100 if who == "firegrid" else None,
        ),
    ]
    return figures


def split_figures(one: PlanResult, split: PlanResult, *, gateways: int, plan: Plan) -> list[Figure]:
    """The burst's alarm latency with the district split by building over ``gateways`` processes, against one."""
    figures: list[Figure] = []
    bursts = [(a, b) for a, b in zip(one.phases, split.phases, strict=False) if a.target_rate is None and a.tag is None]
    for base, phase in bursts:
        for pname, pct in (("p50", 50.0), ("p99", 99.0)):
            figures.append(
                Figure(
                    name=f"latency.split{gateways}.{pname}_ms@burst",
                    label=f"alarm latency {pname} in a {plan.burst:,} burst, {gateways} gateways by building",
                    value=phase.pct(pct),
                    unit="ms",
                    better="lower",
                    baseline=base.pct(pct),
                    baseline_label="one gateway, same run",
                    goal="< 1000 ms" if pname == "p99" else None,
                    goal_max=1000.0 if pname == "p99" else None,
                )
            )
    figures.append(
        Figure(
            name=f"latency.split{gateways}.burst_throughput",
            label=f"burst drained into InfluxDB, {gateways} gateways by building",
            value=split.burst_throughput,
            unit="readings/s",
            baseline=one.burst_throughput,
            baseline_label="one gateway, same run",
        )
    )
    figures.append(
        Figure(
            name=f"latency.split{gateways}.lost_readings",
            label=f"readings missing from InfluxDB, {gateways} gateways by building",
            value=float(split.lost_telemetry),
            unit=f"of {split.telemetry_published:,}",
            better="lower",
            goal="0",
            goal_max=0,
        )
    )
    return figures


def lane_figures(fast: PlanResult, one_lane: PlanResult, *, plan: Plan) -> list[Figure]:
    """The burst's alarm-event latency on the fast lane against the one-lane build, both measured in this run."""
    figures: list[Figure] = []
    for tag, what in (("burst_event", "told by an alarm event"), ("burst", "told by alarm telemetry only")):
        phase = next(
            (ph for ph in fast.phases if ph.target_rate is None and ph.tag == (None if tag == "burst" else tag)), None
        )
        base = (
            next((ph for ph in one_lane.phases if ph.target_rate is None and ph.tag == phase.tag), None)
            if phase
            else None
        )
        if phase is None or base is None:
            continue
        for pname, pct in (("p50", 50.0), ("p99", 99.0)):
            goal = (250.0 if tag == "burst_event" else 1000.0) if pname == "p99" else None
            figures.append(
                Figure(
                    name=f"latency.lane.{pname}_ms@{tag}",
                    label=f"alarm latency {pname} in a {plan.burst:,} burst, {what}, fast lane",
                    value=phase.pct(pct),
                    unit="ms",
                    better="lower",
                    baseline=base.pct(pct),
                    baseline_label="one-lane build (mqtt.event_lane: false), same run",
                    goal=f"<= {goal:.0f} ms" if goal else None,
                    goal_max=goal,
                )
            )
        figures.append(
            Figure(
                name=f"latency.one_lane.lost_alarms@{tag}",
                label=f"one-lane build: alarms not delivered within {plan.alarm_timeout_s:.0f} s, burst, {what}",
                value=float(base.lost_alarms),
                unit=f"of {base.alarms_sent}",
                better="lower",
            )
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__ or "")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--mqtt-protocol", choices=("v5", "v311"), default=None, help="default: the config default")
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the gateway during the burst into this collapsed-stack file"
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="also run the plan with the district split by building over this many gateway processes (against one)",
    )
    parser.add_argument(
        "--no-one-lane", action="store_true", help="skip the burst against the one-lane build (mqtt.event_lane: false)"
    )
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    plan = dataclasses.replace(plan, burst_events=plan.burst_alarms)  # the fast lane's alarms, beside the others
    community = Community(n_devices=1000, n_buildings=50, n_alarms=plan.n_alarms)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        workdir = args.workdir or Path(tmp)
        system = FiregridSystem(mqtt_protocol=args.mqtt_protocol)
        split: PlanResult | None = None
        one_lane: PlanResult | None = None
        try:
            result = run_plan(system, plan, community=community, workdir=workdir, profile=args.profile)
            if not args.no_one_lane:
                # the burst alone (no steady phases) against the one-lane build: the event's baseline, same run
                one_lane = run_plan(
                    FiregridSystem(label="firegrid-one-lane", mqtt_protocol=args.mqtt_protocol, event_lane=False),
                    dataclasses.replace(plan, rates=()),
                    community=community,
                    workdir=workdir,
                )
            if args.gateways > 1:
                # the same plan against the district split by building over N gateways, the one-gateway run above as
                # the baseline measured in the same run
                several = FiregridSystem(
                    label=f"firegrid-{args.gateways}gw", mqtt_protocol=args.mqtt_protocol, gateways=args.gateways
                )
                split = run_plan(several, plan, community=community, workdir=workdir)
        except BenchError as exc:
            emit("latency", [], as_json=args.json, quick=args.quick, notes=[f"not measured: {exc}"])
            return 2
    figures = plan_figures(result, prefix="latency", plan=plan)
    notes = list(result.notes)
    if one_lane is not None:
        figures += lane_figures(result, one_lane, plan=plan)
        notes += one_lane.notes
    if split is not None:
        figures += split_figures(result, split, gateways=args.gateways, plan=plan)
        notes += split.notes
    for phase in result.phases:
        if phase.target_rate and phase.achieved_rate < 0.95 * phase.target_rate:
            notes.append(
                f"{phase.name}: the load generator reached only {phase.achieved_rate:,.0f}/s "
                "(the broker acknowledged no faster on 2 shared cores)"
            )
    conditions = {
        "devices": community.n_devices,
        "phase_s": plan.phase_s,
        "alarms_per_phase": plan.alarms_per_phase,
        "burst": plan.burst,
        "startup_s": round(result.ready_s, 2),
        "mqtt_protocol": args.mqtt_protocol or "default",
        "gateways": args.gateways,
    }
    emit("latency", figures, as_json=args.json, quick=args.quick, notes=notes, conditions=conditions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
