"""``firegrid simulate``: a community of simulated devices over MQTT, with scenarios, load mode and recording.

Examples::

    firegrid simulate --config examples/community.yaml --scenario fire@yg01:2F+30s --duration 5m
    firegrid simulate --buildings 50 --devices-per-building 40 --seed 7 --scenario cooking@b0003+10s
    firegrid simulate --config examples/community.yaml --scenario drill.yaml --record drill.jsonl --fast
    firegrid simulate --buildings 2000 --devices-per-building 50 --rate 2000 --duration 60 --qos 1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from simulators.clock import DurationError, PacedClock, format_ms, parse_duration_ms, wall_ms
from simulators.model import Community, ModelError, from_config, generate
from simulators.scenarios import Scenario, ScenarioError, describe_all, load_file, parse_spec

if TYPE_CHECKING:  # the MQTT client and the gateway's config load only for the commands that need them
    from gateway.config import FiregridConfig
    from simulators.publish import BrokerTarget, MqttPublisher
    from simulators.record import Recorder
    from simulators.via import ViaPublisher

Log = Callable[[str], None]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "scenarios (NAME@TARGET[+OFFSET][/DURATION][,key=value]):\n" + describe_all()
    community = parser.add_argument_group("community")
    community.add_argument("--config", help="firegrid config: its buildings, devices (ids), broker and topic prefix")
    community.add_argument("--buildings", type=int, help="generate N buildings instead of reading a config")
    community.add_argument("--devices-per-building", type=int, default=20, help="with --buildings (default 20)")
    community.add_argument("--prefix", help="topic prefix (default: the config's, else 'firegrid')")
    community.add_argument(
        "--interval",
        action="append",
        default=[],
        metavar="KIND=SECONDS",
        help="reporting interval of a device kind (default smoke/heat 60, extinguisher/call_point 300; never "
        "longer than the device's heartbeat)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int, default=0, help="seed of every generator (same seed + start: same messages)")
    run.add_argument("--start", default="now", help="virtual start time: epoch ms, RFC 3339, or 'now' (default)")
    run.add_argument(
        "--duration", help="how long to run (30s, 5m, 1h); default: until the scenarios end + 1m, or until interrupted"
    )
    run.add_argument("--speed", type=float, default=1.0, help="virtual seconds per wall second (default 1)")
    run.add_argument(
        "--fast", action="store_true", help="as fast as possible, no pacing (needs --duration or scenarios)"
    )
    run.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="SPEC|FILE",
        help="a scenario spec (fire@b07:3F+30s) or a YAML scenario file; repeatable",
    )
    run.add_argument("--drill", action="store_true", help='mark every telemetry and event payload "drill": true')
    run.add_argument("--record", metavar="FILE", help="write what is published as JSON lines for firegrid replay")
    run.add_argument("--dry-run", action="store_true", help="no broker: only generate (and --record)")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    mqtt = parser.add_argument_group("broker")
    mqtt.add_argument("--broker", help="mqtt://HOST:PORT (default: the config's mqtt.url, else 127.0.0.1:1883)")
    mqtt.add_argument("--username")
    mqtt.add_argument("--password")
    mqtt.add_argument("--qos", type=int, choices=(0, 1), default=1)
    mqtt.add_argument("--connections", type=int, default=4, help="pooled connections (default 4)")
    mqtt.add_argument(
        "--device-connections",
        action="store_true",
        help="one connection per device with a real 'offline' last will (up to 2,000 devices)",
    )
    mqtt.add_argument(
        "--max-inflight",
        type=int,
        default=1000,
        help="unacknowledged QoS 1 publishes per connection before publishing waits (default 1000)",
    )
    mqtt.add_argument(
        "--client-id",
        default=f"firegrid-sim-{os.getpid()}",
        help="client id prefix (default firegrid-sim-<pid>, so several generators can run side by side)",
    )
    via = parser.add_argument_group("path (docs/telemetry.md, 'Other sources')")
    via.add_argument(
        "--via",
        choices=("mqtt", "uitd", "onenet", "ctwing", "http"),
        default="mqtt",
        help="send through the broker (default), a UITD (GB/T 26875.3, panel_point devices of uitd.panels), a "
        "signed OneNET push, a CTWing push, or plain HTTP with an ingest token; all but mqtt need --config",
    )
    via.add_argument("--api", help="with --via onenet|ctwing|http: the gateway's base URL (default: the config's http)")
    via.add_argument("--token", help="with --via http: a token of role ingest")
    via.add_argument("--uitd", metavar="HOST:PORT", help="with --via uitd: the listener (default: uitd.listen)")
    load = parser.add_argument_group("load mode")
    load.add_argument("--rate", type=float, help="load mode: hold R messages/s across all devices (paced)")


class UsageError(Exception):
    pass


def parse_start(text: str) -> int:
    if text == "now":
        return wall_ms()
    if text.isdigit():
        return int(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--start: {text!r} is not epoch ms, RFC 3339 or 'now'") from None
    if parsed.tzinfo is None:
        raise UsageError("--start: give a UTC offset (…Z or +08:00)")
    return int(parsed.timestamp() * 1000)


def parse_intervals(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        kind, sep, value = item.partition("=")
        if not sep or kind not in ("smoke", "heat", "extinguisher", "call_point"):
            raise UsageError(
                f"--interval {item!r}: expected KIND=SECONDS with KIND smoke, heat, extinguisher or call_point"
            )
        try:
            out[kind] = float(value)
        except ValueError:
            raise UsageError(f"--interval {item!r}: seconds must be a number") from None
        if out[kind] <= 0:
            raise UsageError(f"--interval {item!r}: must be positive")
    return out


def load_community(args: argparse.Namespace) -> tuple[Community, Any]:
    """The community, and the config it came from (None when generated)."""
    config = None
    if args.config:
        from gateway.config import load_or_exit

        config = load_or_exit(args.config, prog="simulate")
    if args.buildings is not None:
        community = generate(
            buildings=args.buildings,
            devices_per_building=args.devices_per_building,
            seed=args.seed,
            prefix=args.prefix or (config.mqtt.topic_prefix if config else "firegrid"),
        )
    elif config is not None:
        community = from_config(config)
        if args.prefix:
            community = Community(community.buildings, community.devices, prefix=args.prefix)
    else:
        raise UsageError("give --config CFG or --buildings N [--devices-per-building M]")
    if not community.devices:
        raise UsageError("the community has no devices")
    return community, config


def load_scenarios(specs: list[str], community: Community) -> tuple[list[Scenario], int | None]:
    scenarios: list[Scenario] = []
    file_duration: int | None = None
    for spec in specs:
        if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
            loaded = load_file(spec, community)
            scenarios.extend(loaded.scenarios)
            if loaded.duration_ms is not None:
                file_duration = max(file_duration or 0, loaded.duration_ms)
        else:
            scenarios.append(parse_spec(spec, community))
    return scenarios, file_duration


def run_length_ms(args: argparse.Namespace, scenarios: list[Scenario], file_duration: int | None) -> int | None:
    if args.duration:
        try:
            return parse_duration_ms(args.duration)
        except DurationError as exc:
            raise UsageError(f"--duration: {exc}") from None
    if file_duration is not None:
        return file_duration
    if scenarios:
        ends = [s.end_ms() or s.at_ms + 300_000 for s in scenarios]
        return max(ends) + 60_000
    return None


def broker_target(args: argparse.Namespace, config: FiregridConfig | None) -> BrokerTarget:
    from simulators.publish import BrokerTarget

    url = args.broker or (config.mqtt.url if config is not None else "mqtt://127.0.0.1:1883")
    password = args.password
    if password is None and config is not None and args.broker is None and config.mqtt.password is not None:
        password = config.mqtt.password.get_secret_value()
    username = args.username or (config.mqtt.username if config is not None and args.broker is None else None)
    return BrokerTarget.from_url(url, username=username, password=password)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (UsageError, ModelError, ScenarioError) as exc:
        print(f"firegrid simulate: {exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM end the run cleanly (devices say ``offline``, the summary is printed); handlers restored."""
    stop = threading.Event()
    previous: dict[signal.Signals, Callable[[int, FrameType | None], object] | int | None] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    from simulators.publish import DevicePublisher, PooledPublisher, PublishError
    from simulators.record import Recorder
    from simulators.via import ViaError, ViaPublisher, via_publisher

    community, config = load_community(args)
    start_ms = parse_start(args.start)
    scenarios, file_duration = load_scenarios(args.scenario, community)
    length_ms = run_length_ms(args, scenarios, file_duration)
    intervals = parse_intervals(args.interval)
    log: Log = (lambda _: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
    if args.rate is not None:
        if scenarios:
            raise UsageError("--rate (load mode) does not play scenarios; run them separately")
        if length_ms is None:
            raise UsageError("--rate needs --duration")
    if args.fast and length_ms is None:
        raise UsageError("--fast needs --duration or a scenario")
    if args.speed <= 0:
        raise UsageError("--speed must be positive")

    publisher: MqttPublisher | ViaPublisher | None = None
    if args.via != "mqtt" and not args.dry_run:
        if args.rate is not None:
            raise UsageError("--rate (load mode) goes through MQTT only; bench/ measures the other paths")
        try:
            publisher = via_publisher(args.via, config=config, api=args.api, token=args.token, uitd=args.uitd)
            publisher.start()
        except ViaError as exc:
            raise UsageError(str(exc)) from None
    elif not args.dry_run:
        target = broker_target(args, config)
        try:
            if args.device_connections:
                publisher = DevicePublisher(
                    target,
                    devices={d.id: community.topic(d, "status") for d in community.devices},
                    qos=args.qos,
                    client_id=args.client_id,
                )
            else:
                publisher = PooledPublisher(
                    target,
                    connections=args.connections,
                    qos=args.qos,
                    max_inflight=args.max_inflight,
                    client_id=args.client_id,
                )
            publisher.start()
        except PublishError as exc:
            print(f"firegrid simulate: {exc}", file=sys.stderr)
            if publisher is not None:
                publisher.stop()
            return 1
    recorder = Recorder(args.record) if args.record else None
    try:
        with _stop_on_signals() as stop:
            if args.rate is not None:
                assert length_ms is not None and not isinstance(publisher, ViaPublisher)
                return _load(args, community, start_ms, length_ms, publisher, recorder, stop, log)
            return _simulate(args, community, start_ms, length_ms, scenarios, intervals, publisher, recorder, stop, log)
    finally:
        if recorder is not None:
            recorder.close()
        if publisher is not None:
            publisher.stop()


def _load(
    args: argparse.Namespace,
    community: Community,
    start_ms: int,
    length_ms: int,
    publisher: MqttPublisher | None,
    recorder: Recorder | None,
    stop: threading.Event,
    log: Log,
) -> int:
    from simulators.load import LoadGenerator, run_load
    from simulators.progress import Progress

    generator = LoadGenerator(community, seed=args.seed, start_ms=start_ms, rate=args.rate, drill=args.drill)
    total = int(args.rate * length_ms / 1000)
    log(
        f"load: {args.rate:,.0f} msg/s for {format_ms(length_ms)} across {len(community.devices):,} devices "
        f"(QoS {args.qos})"
    )
    progress = None if args.quiet else Progress(total=total)
    result = run_load(
        generator, duration_s=length_ms / 1000, publisher=publisher, recorder=recorder, progress=progress, stop=stop
    )
    print(
        result.summary(
            target_rate=args.rate, qos=args.qos, devices=len(community.devices), published=publisher is not None
        )
    )
    return 0 if result.errors == 0 and not stop.is_set() else 1


def _simulate(
    args: argparse.Namespace,
    community: Community,
    start_ms: int,
    length_ms: int | None,
    scenarios: list[Scenario],
    intervals: dict[str, float],
    publisher: MqttPublisher | ViaPublisher | None,
    recorder: Recorder | None,
    stop: threading.Event,
    log: Log,
) -> int:
    from simulators.runner import drive
    from simulators.sim import Simulation
    from simulators.via import ViaPublisher

    sim = Simulation(
        community, seed=args.seed, start_ms=start_ms, drill=args.drill, intervals=intervals, scenarios=scenarios
    )
    end_ms = start_ms + length_ms if length_ms is not None else 1 << 62
    log(
        f"simulating {len(community.devices):,} devices in {len(community.buildings):,} buildings, "
        f"{len(scenarios)} scenario(s), "
        f"{'for ' + format_ms(length_ms) if length_ms is not None else 'until interrupted'}"
        f"{' as fast as possible' if args.fast else f' at {args.speed:g}x' if args.speed != 1 else ''}"
    )
    for scenario in scenarios:
        log(f"  {scenario.spec or scenario.name}")
    clock = None if args.fast else PacedClock(start_ms=start_ms, speed=args.speed)
    result = drive(
        sim,
        end_ms=end_ms,
        clock=clock,
        publisher=publisher,
        device_wills=bool(args.device_connections),
        recorder=recorder,
        stop=stop,
    )
    stats = None if publisher is None else publisher.stats
    print(
        f"published {result.messages:,} messages ({result.malformed} malformed on purpose) over "
        f"{format_ms(result.virtual_ms)} of simulated time"
        + (
            f"; acknowledged {stats.acked:,}, errors {stats.errors:,}, disconnects {stats.disconnects:,}"
            if stats
            else ""
        )
        + (f"; {publisher.skipped:,} not expressible via {args.via}" if isinstance(publisher, ViaPublisher) else "")
        + (f"; recorded to {args.record}" if args.record else "")
    )
    if stats is not None and (stats.errors or not result.flushed):
        return 1
    return 0
