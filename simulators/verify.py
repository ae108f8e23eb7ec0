"""``firegrid verify``: drive a scenario against a live deployment and judge the alerts it raises.

    firegrid verify --config CFG [--scenario FILE|SPEC ...] --api URL --token T [--webhook-listen HOST:PORT]

1. Connects to the API's live stream ``GET /api/v1/stream`` (Bearer token) and, with ``--webhook-listen``, opens a
   webhook receiver (configure it in the deployment as a *drill receiver*: ``notify.drill_receivers.webhooks``).
2. Publishes the scenario's traffic to the deployment's broker (the config's ``mqtt`` section) for the devices the
   scenario drives, with the registry's ids.  Every telemetry and event payload carries ``"drill": true``: the
   rules engine keeps drill state apart from real state (a drill never masks, confirms or clears a real alarm), the
   alert store marks the alerts ``drill``, they are in the audit trail like any other, and the notifier delivers
   them only to the drill receivers — the real task force is never paged.  Retained statuses are *not* published
   (a status cannot carry the drill flag, and overwriting a real device's retained status would lie about it).
3. Checks every expectation (derived from the scenarios for the shipped default rules, or the file's ``expect:``
   list) on every channel in use: observed within its deadline, marked drill, and nothing unexpected raised for the
   driven buildings.  Prints a table and exits 0 when everything passed, 1 otherwise, 2 on usage errors.

Without ``--scenario`` the built-in smoke test runs (about 20 s): a growing fire on a floor with two smoke
detectors (must become a confirmed fire), a call point pressed, and cooking smoke at a detector in another building
(must stay an unconfirmed alarm).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import orjson

from simulators.clock import DurationError, PacedClock, parse_duration_ms, wall_ms
from simulators.model import Community, ModelError, SimDevice, format_floor, from_config
from simulators.receiver import Arrival, WebhookReceiver
from simulators.runner import Publisher, RunResult, drive
from simulators.scenario_kinds import Disconnect, Fire
from simulators.scenarios import Expectation, Scenario, ScenarioError, build, load_file, parse_spec
from simulators.sim import Message, Simulation

RAISING = ("alert.raised", "alert.updated")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="the deployment's config: broker, registry (device ids)")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="FILE|SPEC",
        help="a YAML scenario file or a spec (fire@b07:3F+5s); default: the built-in smoke test",
    )
    parser.add_argument("--api", help="the gateway's base URL, e.g. http://127.0.0.1:8080 (for the SSE stream)")
    parser.add_argument("--token", help="an API bearer token (viewer is enough)")
    parser.add_argument(
        "--webhook-listen", metavar="HOST:PORT", help="also receive the drill receivers' webhooks here and check them"
    )
    parser.add_argument("--broker", help="override the config's mqtt.url")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--grace",
        default="5s",
        help="how long to keep watching for unexpected alerts after the last expectation is met (default 5s)",
    )
    parser.add_argument("--timeout", default="15m", help="give up after this long in any case (default 15m)")
    parser.add_argument(
        "--no-cleanup",
        dest="cleanup",
        action="store_false",
        help="skip the cleanup phase (normal drill readings until this run's drill alerts clear in the rules engine)",
    )
    parser.add_argument("--cleanup-timeout", default="2m", help="longest cleanup phase (default 2m)")
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON instead of a table")
    parser.add_argument(
        "--via",
        choices=("mqtt", "uitd", "onenet", "ctwing", "http"),
        default="mqtt",
        help="drill through the broker (default), a UITD (panel-alarm scenarios; the panel needs drill: true), a "
        "signed OneNET push, a CTWing push or plain HTTP (--ingest-token); only the devices the path maps are driven",
    )
    parser.add_argument("--ingest-token", help="with --via http: a token of role ingest")


class VerifyError(Exception):
    """The verification could not run (API unreachable, bad token, bad scenario): exit 2."""


@dataclass(frozen=True, slots=True)
class Observation:
    channel: str  # "sse" | "webhook"
    change: str  # alert.raised, alert.updated, ...
    alert: dict[str, Any]
    received_ms: int


@dataclass
class Row:
    expectation: Expectation | None
    observed: str = "-"
    latency: str = "-"
    ok: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        if self.expectation is None:
            return "unexpected alert"
        return self.expectation.describe()


@dataclass
class Verdict:
    rows: list[Row] = field(default_factory=list)
    messages: int = 0
    channels: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        headers = ("expectation", "observed", "latency", "result")
        body = [
            (r.label, r.observed, r.latency, ("PASS" if r.ok else "FAIL") + (f" ({r.note})" if r.note else ""))
            for r in self.rows
        ]
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(headers)]
        line = "  ".join("-" * w for w in widths)
        out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)), line]
        out.extend("  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body)
        failed = sum(1 for r in self.rows if not r.ok)
        out.append(line)
        out.append(
            f"{'PASSED' if self.passed else 'FAILED'}: {len(self.rows) - failed}/{len(self.rows)} checks passed "
            f"({self.messages} drill messages published; checked via {', '.join(self.channels)})"
        )
        return "\n".join(out)

    def as_json(self) -> bytes:
        return orjson.dumps(
            {
                "passed": self.passed,
                "messages": self.messages,
                "channels": list(self.channels),
                "rows": [
                    {"expectation": r.label, "observed": r.observed, "latency": r.latency, "ok": r.ok, "note": r.note}
                    for r in self.rows
                ],
            }
        )


# --- the built-in smoke test ---------------------------------------------------------------------------------------


def builtin_scenarios(community: Community) -> list[Scenario]:
    """Fire on the first floor with two smoke detectors, a call point, cooking smoke in another building."""
    fire_floor: tuple[str, int] | None = None
    for building in community.buildings:
        floors: dict[int, int] = {}
        for d in community.in_building(building.id, kind="smoke"):
            if d.floor is not None:
                floors[d.floor] = floors.get(d.floor, 0) + 1
        two = sorted(f for f, n in floors.items() if n >= 2)
        if two:
            fire_floor = (building.id, two[0])
            break
    if fire_floor is None:
        raise VerifyError("the built-in smoke test needs a floor with two smoke detectors in the registry")
    fire_building, floor = fire_floor
    specs = [f"fire@{fire_building}:{format_floor(floor)}+2s,spread=5s"]
    call_points = [d for d in community.devices if d.kind == "call_point"]
    if call_points:
        specs.append(f"callpoint@{call_points[0].id}+1s/20s")
    cooking = next((d for d in community.devices if d.kind == "smoke" and d.building != fire_building), None)
    if cooking is not None:
        specs.append(f"cooking@{cooking.id}+2s/40s,peak=8")
    return [parse_spec(s, community) for s in specs]


# --- observers ----------------------------------------------------------------------------------------------------


class Observer:
    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.changed = asyncio.Event()

    def add(self, channel: str, change: str, alert: Any) -> None:
        if isinstance(alert, dict) and change.startswith("alert."):
            self.observations.append(Observation(channel, change, alert, wall_ms()))
            self.changed.set()

    async def wait_changed(self, timeout_s: float) -> None:
        """Until the next observation, or ``timeout_s``."""
        self.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed.wait(), timeout_s)


async def follow_stream(api: str, token: str, observer: Observer, ready: asyncio.Future[None]) -> None:
    """Read ``GET /api/v1/stream``, reconnecting with ``Last-Event-ID`` if the connection drops."""
    url = api.rstrip("/") + "/api/v1/stream"
    last_id: str | None = None
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with session.get(url, headers=headers) as response:
                    if response.status != 200:
                        text = (await response.text())[:300]
                        raise VerifyError(f"GET {url}: HTTP {response.status}: {text}")
                    event, data = "message", list[str]()
                    async for raw in response.content:
                        line = raw.decode("utf-8", "replace").rstrip("\r\n")
                        if not line:
                            if data:
                                _dispatch(event, "\n".join(data), observer, ready)
                            event, data = "message", []
                        elif line.startswith(":"):
                            continue
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].lstrip())
                        elif line.startswith("id:"):
                            last_id = line[3:].strip()
            except aiohttp.ClientError as exc:
                if not ready.done():
                    raise VerifyError(f"cannot reach the API stream at {url}: {exc}") from None
            await asyncio.sleep(0.2)


def _dispatch(event: str, data: str, observer: Observer, ready: asyncio.Future[None]) -> None:
    if event == "hello" and not ready.done():
        ready.set_result(None)
        return
    if event != "alert":
        return
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if isinstance(document, dict):
        observer.add("sse", str(document.get("change") or "alert.changed"), document.get("alert"))


async def start_webhook_receiver(listen: str, observer: Observer) -> WebhookReceiver:
    """Accept the deployment's (drill receiver) webhooks: ``{"type": "alert.raised", "data": {...alert...}}``, on any
    path.  Signatures are not checked: a drill receiver's secret is the deployment's, not this command's."""
    host, _, port = listen.rpartition(":")
    if not port.isdigit():
        raise VerifyError(f"--webhook-listen {listen!r}: expected HOST:PORT")

    def observe(arrival: Arrival) -> None:
        with contextlib.suppress(orjson.JSONDecodeError):
            document = orjson.loads(arrival.body)
            if isinstance(document, dict):
                observer.add("webhook", str(document.get("type") or ""), document.get("data"))

    receiver = WebhookReceiver()
    receiver.on_arrival(observe)
    try:
        return await receiver.start(host=host.strip("[]") or "0.0.0.0", port=int(port))
    except OSError as exc:
        raise VerifyError(f"--webhook-listen {listen}: {exc}") from None


# --- judging --------------------------------------------------------------------------------------------------------


def _fmt_latency(ms: int) -> str:
    return f"{ms / 1000:.1f}s"


def alert_time_ms(alert: dict[str, Any], change: str) -> int | None:
    """When the deployment says the alert was raised (or updated): the triggering reading's time."""
    prefix = "updated" if change == "alert.updated" else "raised"
    value = alert.get(f"{prefix}_ms")
    if isinstance(value, int):
        return value
    text = alert.get(f"{prefix}_at")
    if isinstance(text, str):
        with contextlib.suppress(ValueError):
            return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)
    return None


def _latency(o: Observation, since_ms: int) -> str:
    """Seconds since the scenario step, and in brackets the deployment's own delay (reading time to receipt)."""
    text = _fmt_latency(o.received_ms - since_ms)
    raised = alert_time_ms(o.alert, o.change)
    if raised is not None:
        text += f" ({max(0, o.received_ms - raised)}ms)"
    return text


def _describe(alert: dict[str, Any]) -> str:
    where = alert.get("device") or f"{alert.get('building')}:{format_floor(alert.get('floor'))}"
    confirmed = " confirmed" if alert.get("confirmed") is True else ""
    return f"{alert.get('rule')} {alert.get('severity')}{confirmed} at {where}"


def judge(
    expectations: list[Expectation],
    observations: list[Observation],
    *,
    start_ms: int,
    channels: tuple[str, ...],
    driven_devices: set[str],
    buildings: set[str],
    now_ms: int,
) -> tuple[list[Row], bool]:
    """Rows of the verdict, and whether the run can stop (every required expectation decided)."""
    rows: list[Row] = []
    decided = True
    relevant = [o for o in observations if o.change in RAISING and o.alert.get("building") in buildings]
    for exp in expectations:
        if not exp.required and not exp.absent:
            continue
        deadline = start_ms + exp.after_ms + exp.within_ms
        matches = [
            o
            for o in relevant
            if exp.matches(o.alert) and (o.alert.get("drill") or o.alert.get("device") in driven_devices)
        ]
        if exp.absent:
            row = Row(exp, ok=not matches)
            if matches:
                row.observed = _describe(matches[0].alert) + f" via {matches[0].channel}"
                row.note = "must not happen"
            else:
                row.observed = "none"
            rows.append(row)
            continue
        per_channel: list[str] = []
        latencies: list[str] = []
        ok = True
        notes: list[str] = []
        first: Observation | None = None
        for channel in channels:
            seen = [o for o in matches if o.channel == channel]
            if not seen:
                ok = False
                per_channel.append(f"nothing via {channel}")
                if now_ms < deadline:
                    decided = False
                continue
            o = seen[0]
            first = first or o
            latency = _latency(o, start_ms + exp.after_ms)
            latencies.append(f"{channel} {latency}" if len(channels) > 1 else latency)
            if o.received_ms > deadline:
                ok = False
                notes.append(f"{channel} late: deadline {_fmt_latency(exp.within_ms)}")
            if not o.alert.get("drill"):
                ok = False
                notes.append("not marked drill")
        observed = _describe(first.alert) if first else "-"
        if per_channel:
            observed = (observed + "; " if first else "") + "; ".join(per_channel)
        rows.append(Row(exp, observed=observed, latency=", ".join(latencies) or "-", ok=ok, note="; ".join(notes)))
    # Anything raised for the driven devices (or their floors/buildings, as drill) that no expectation allows.
    seen_keys: set[Any] = set()
    for o in observations:
        if o.change != "alert.raised" or o.alert.get("building") not in buildings:
            continue
        if not o.alert.get("drill") and o.alert.get("device") not in driven_devices:
            continue  # a real alert of a real device: not ours to judge
        if any(e.matches(o.alert) for e in expectations if not e.absent):
            continue
        a = o.alert
        key = a.get("id") or a.get("key") or (a.get("rule"), a.get("building"), a.get("floor"), a.get("device"))
        if key in seen_keys:
            continue
        seen_keys.add(key)
        rows.append(
            Row(
                None,
                observed=_describe(o.alert) + f" via {o.channel}",
                latency=_fmt_latency(o.received_ms - start_ms),
                ok=False,
                note="not expected",
            )
        )
    return rows, decided


# --- running --------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    try:
        verdict = asyncio.run(verify(args))
    except (VerifyError, ScenarioError, ModelError, DurationError) as exc:
        print(f"firegrid verify: {exc}", file=sys.stderr)
        return 2
    return 0 if verdict.passed else 1


def _print_verdict(args: argparse.Namespace, verdict: Verdict) -> None:
    if args.json:
        print(verdict.as_json().decode(), flush=True)
    else:
        print(verdict.table(), flush=True)


def _load(args: argparse.Namespace) -> tuple[Any, Community, list[Scenario], list[Expectation] | None]:
    from gateway.config import load_or_exit

    config = load_or_exit(args.config, prog="verify")
    community = from_config(config)
    scenarios: list[Scenario] = []
    explicit: list[Expectation] | None = None
    for spec in args.scenario:
        if spec.endswith((".yaml", ".yml")):
            loaded = load_file(spec, community)
            scenarios.extend(loaded.scenarios)
            if loaded.expectations is not None:
                explicit = [*(explicit or []), *loaded.expectations]
        else:
            scenarios.append(parse_spec(spec, community))
    if not scenarios:
        scenarios = builtin_scenarios(community)
    return config, community, scenarios, explicit


async def verify(args: argparse.Namespace) -> Verdict:
    from simulators.cli import broker_target
    from simulators.publish import PooledPublisher, PublishError
    from simulators.via import ViaError, ViaPublisher, via_publisher

    if not args.api and not args.webhook_listen:
        raise VerifyError("give --api URL --token T (SSE stream) and/or --webhook-listen HOST:PORT")
    if args.api and not args.token:
        raise VerifyError("--api needs --token")
    config, community, scenarios, explicit = _load(args)
    grace_ms = parse_duration_ms(args.grace)
    timeout_ms = parse_duration_ms(args.timeout)
    expectations: list[Expectation] = []
    for scenario in scenarios:
        expectations.extend(scenario.expectations(community))
    if explicit is not None:
        # the file's expectations decide what is required; the derived ones still say what is allowed
        expectations = [*explicit, *(e for e in expectations if not e.required and not e.absent)]
    driven: set[str] = set()
    for scenario in scenarios:
        driven.update(d.id for d in _driven(scenario, community))
    small = community.select(driven)
    buildings = {d.building for d in small.devices}
    channels = tuple(c for c, on in (("sse", bool(args.api)), ("webhook", bool(args.webhook_listen))) if on)

    observer = Observer()
    tasks: list[asyncio.Task[Any]] = []
    receiver: WebhookReceiver | None = None
    publisher: PooledPublisher | ViaPublisher | None = None
    stop = threading.Event()
    try:
        if args.webhook_listen:
            receiver = await start_webhook_receiver(args.webhook_listen, observer)
        if args.api:
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            stream = asyncio.create_task(follow_stream(args.api, args.token, observer, ready))
            tasks.append(stream)
            done, _ = await asyncio.wait({stream, ready}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
            if stream in done:
                stream.result()  # raises the VerifyError
            if not ready.done():
                raise VerifyError(f"no 'hello' from {args.api}/api/v1/stream within 15 s")
        try:
            if args.via != "mqtt":
                publisher = via_publisher(args.via, config=config, api=args.api, token=args.ingest_token, uitd=None)
            else:
                publisher = PooledPublisher(
                    broker_target(args, config),
                    connections=1,
                    qos=1,
                    client_id=f"firegrid-verify-{uuid.uuid4().hex[:8]}",
                )
            publisher.start()
        except (PublishError, ViaError) as exc:
            raise VerifyError(str(exc)) from None
        start_ms = wall_ms()
        sim = Simulation(
            small,
            seed=args.seed,
            start_ms=start_ms,
            drill=True,
            statuses=False,
            scenarios=[_rebind(s, small) for s in scenarios],
        )
        sent: list[int] = [0]
        driver = _drive_in_background(
            sim,
            end_ms=start_ms + timeout_ms,
            publisher=publisher,
            stop=stop,
            on_messages=lambda m: sent.__setitem__(0, sent[0] + len(m)),
        )
        tasks.append(driver)
        judge_now = functools.partial(
            judge,
            expectations,
            observer.observations,
            start_ms=start_ms,
            channels=channels,
            driven_devices=driven,
            buildings=buildings,
        )
        decided_at: int | None = None
        while True:
            now = wall_ms()
            _, decided = judge_now(now_ms=now)
            if decided and decided_at is None:
                decided_at = now
            if decided_at is not None and now >= decided_at + grace_ms:
                break
            if now >= start_ms + timeout_ms or driver.done():
                break
            await observer.wait_changed(0.25)
        stop.set()
        with contextlib.suppress(Exception):
            await driver
        rows, _ = judge_now(now_ms=wall_ms())
        verdict = Verdict(rows=rows, messages=sent[0], channels=channels)
        _print_verdict(args, verdict)  # before the cleanup phase, which may take a while
        if args.cleanup:
            await _safe_cleanup(
                cleanup(
                    small,
                    observer,
                    publisher,
                    buildings=buildings,
                    expectations=expectations,
                    seed=args.seed,
                    timeout_ms=parse_duration_ms(args.cleanup_timeout),
                )
            )
        return verdict
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if publisher is not None:
            publisher.flush(timeout=5)
            publisher.stop()
        if receiver is not None:
            await receiver.stop()


async def _safe_cleanup(cleaning: Awaitable[None]) -> None:
    """The verdict is already printed: a failing cleanup is reported, never turned into a crash."""
    try:
        await cleaning
    except Exception as exc:  # report whatever went wrong, keep the verdict's exit code
        print(f"cleanup: failed: {type(exc).__name__}: {exc}", file=sys.stderr)


async def cleanup(
    community: Community,
    observer: Observer,
    publisher: Publisher,
    *,
    buildings: set[str],
    expectations: list[Expectation],
    seed: int,
    timeout_ms: int,
) -> None:
    """Bring the driven devices back to normal until the drill alerts this run raised have cleared.

    Without it a second verification soon after the first would find its alarms still active in the rules engine
    (an active alert is not raised again) and fail.  The devices report their normal signal every 2 s, with the
    ``drill`` flag, call points send ``reset``; we watch for ``alert.cleared`` of every drill alert left active.
    """
    names: dict[Any, str] = {}

    required = [e for e in expectations if e.required and not e.absent]

    def still_open() -> set[Any]:
        """Drill alerts a next run must see raised again (they meet a required expectation) whose last change seen
        was a raise or an update, not a clear.  Others (the count rule's repeated-alarms trouble, which holds for
        24 h) are allowed to stay."""
        last: dict[Any, str] = {}
        for o in observer.observations:
            a = o.alert
            if a.get("drill") and a.get("building") in buildings and any(e.matches(a) for e in required):
                key = o.alert.get("id") or o.alert.get("key")
                last[key] = o.change
                names[key] = _describe(o.alert)
        return {key for key, change in last.items() if change in RAISING}

    raised = still_open()
    if not raised:
        print("cleanup: no drill alert left active", file=sys.stderr)
        return
    start = wall_ms()
    sim = Simulation(
        community,
        seed=seed + 1,
        start_ms=start,
        drill=True,
        statuses=False,
        intervals=dict.fromkeys(("smoke", "heat", "extinguisher", "call_point"), 2.0),
    )
    for device in sim.devices.values():
        if device.spec.kind == "call_point":
            sim.at(start, functools.partial(sim.event, device, event_type="reset"))
    stop = threading.Event()
    driver = _drive_in_background(sim, end_ms=start + timeout_ms, publisher=publisher, stop=stop)
    try:
        while still_open() and not driver.done():
            await observer.wait_changed(0.5)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await driver
    left = still_open()
    took = (wall_ms() - start) / 1000
    if left:
        print(
            f"cleanup: {len(left)} of {len(raised)} drill alerts still active after {took:.0f}s "
            f"({'; '.join(sorted(names[k] for k in left))}): a verification of the same devices soon may find them "
            "still raised",
            file=sys.stderr,
        )
    else:
        print(f"cleanup: the {len(raised)} drill alerts left active have cleared ({took:.0f}s)", file=sys.stderr)


def _drive_in_background(
    sim: Simulation,
    *,
    end_ms: int,
    publisher: Publisher,
    stop: threading.Event,
    on_messages: Callable[[list[Message]], None] | None = None,
) -> asyncio.Task[RunResult]:
    """Drive ``sim`` in real time from its start, in a thread, until ``end_ms`` or ``stop``: the devices' statuses
    are left as they are (the deployment's devices are not going anywhere)."""
    clock = PacedClock(start_ms=sim.start_ms)
    return asyncio.create_task(
        asyncio.to_thread(
            drive,
            sim,
            end_ms=end_ms,
            clock=clock,
            publisher=publisher,
            on_messages=on_messages,
            stop=stop,
            final_statuses=False,
        )
    )


def _driven(scenario: Scenario, community: Community) -> list[SimDevice]:
    """Devices whose traffic the scenario changes (the fire: its floor and the floor above; a disconnect: all)."""
    if isinstance(scenario, Fire):
        _, plan = scenario._floor_plan(community)
        return [d for d, _, _ in plan]
    if isinstance(scenario, Disconnect):
        return scenario.devices(community)
    return [scenario.pick(community)]


def _rebind(scenario: Scenario, community: Community) -> Scenario:
    """The same scenario for the sub-community of driven devices (targets are resolved against it again)."""
    target = scenario.target
    text = target.device or (
        f"{target.building}:{format_floor(target.floor)}"
        if target.floor is not None
        else "*"
        if target.everything
        else target.building
    )
    return build(
        scenario.name,
        text,
        at_ms=scenario.at_ms,
        duration_ms=scenario.duration_ms,
        params=dict(scenario.params),
        spec=scenario.spec,
        community=community,
    )
