"""``firegrid demo --config examples/community.yaml``: a whole community live on this machine, nothing else needed.

One process, one event loop (plus the simulator's thread):

* an embedded MQTT broker (amqtt) on 127.0.0.1:1883, or a free port when 1883 is taken;
* the gateway service exactly as ``firegrid run`` builds it (gateway/service/service.py), with the config's registry,
  rules and API tokens, but: no InfluxDB (telemetry stays in the local store; the service logs so), a throw-away data
  directory, MQTT 3.1.1 (amqtt does not speak MQTT 5), and the config's ``notify`` section replaced by a local
  webhook receiver, so a demo never pages anybody;
* the simulated community from the config (simulators/), with a simulated fire ("fire drill") every
  ``--drill-every`` in the next building in turn, each lasting ``--drill-length``;
* the other doors (gateway/tools/demo_paths.py): a UITD (GB/T 26875.3) in front of a simulated fire alarm panel in
  the first building, with a panel fire alarm half-way between drills, and OneNET, CTWing and plain HTTP pushes;
* the local webhook receiver: it checks each delivery's Standard Webhooks signature, prints it to the console,
  keeps the latest at ``GET /deliveries`` and publishes it on the dashboard's live stream as a ``webhook`` event.

Ctrl-C or SIGTERM stops everything in order (simulator, gateway with its commit and shutdown, receiver, broker) and
exits 0.  See docs/deploy.md#the-demo for what differs from a real deployment (amqtt's sessions, protocol).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from common.webhooks import verify
from gateway.config import ApiToken, FiregridConfig, load_or_exit
from gateway.tools.demo_console import DemoConsole
from gateway.tools.demo_inspections import first_inspection, inspection_lines
from gateway.tools.demo_paths import PathsFeeder, with_other_paths
from gateway.tools.demo_robots import DemoRobots
from gateway.tools.demo_voice import DemoVoice

if TYPE_CHECKING:
    from simulators.receiver import Arrival

if TYPE_CHECKING:  # amqtt is imported when the demo starts its broker, not with the CLI
    from amqtt.broker import Broker

log = logging.getLogger("firegrid.demo")

DEFAULT_MQTT_PORT = 1883
RECEIVER_PATH = "/webhook"
KEEP_DELIVERIES = 200


class DemoError(Exception):
    """The demo cannot start (a port asked for is taken, the community has no smoke detector for drills)."""


# --- arguments ------------------------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``1h``."""
    text = text.strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        value = float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90, 90s, 3m, 1h)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", required=True, help="the community: a firegrid config (examples/community.yaml)"
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=None,
        help="dashboard/API port (default: the config's, else a free one; 0: free)",
    )
    parser.add_argument(
        "--mqtt-port", type=int, default=None, help="embedded broker port (default 1883 if free; 0: free)"
    )
    parser.add_argument("--drill-every", type=_seconds, default=180.0, help="a simulated fire every … (default 3m)")
    parser.add_argument("--first-drill", type=_seconds, default=30.0, help="the first one after … (default 30s)")
    parser.add_argument("--drill-length", type=_seconds, default=120.0, help="how long each fire burns (default 2m)")
    parser.add_argument("--duration", type=_seconds, default=None, help="stop after … (default: run until Ctrl-C)")
    parser.add_argument("--data-dir", type=Path, default=None, help="keep the demo's SQLite store here (default: temp)")
    parser.add_argument("--seed", type=int, default=0, help="the simulator's seed")
    parser.add_argument(
        "--dispatch-after",
        type=_seconds,
        default=10.0,
        help="the demo's duty room dispatches the nearest station to each new fire after … (default 10s; 0: never)",
    )
    parser.add_argument(
        "--voice-after",
        type=_seconds,
        default=30.0,
        help="the duty room misses every second fire; unacknowledged, it phones the duty officer (the voice tier,"
        " through a local stand-in provider) after … (default 30s; 0: no voice tier)",
    )
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))


# --- ports ----------------------------------------------------------------------------------------------------------


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def choose_port(requested: int | None, preferred: int, what: str) -> int:
    """``requested`` exactly (0: any free port), else ``preferred`` when free, else any free port."""
    if requested == 0:
        return free_port()
    if requested is not None:
        if not port_free(requested):
            raise DemoError(f"{what} port {requested} is in use (give another, or 0 for a free one)")
        return requested
    return preferred if port_free(preferred) else free_port()


# --- the config the demo runs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoTokens:
    viewer: str
    operator: str


def _unscoped(tokens: list[ApiToken], role: str) -> ApiToken | None:
    return next((t for t in tokens if t.role == role and t.grids is None and t.buildings is None), None)


def demo_config(
    config: FiregridConfig,
    *,
    mqtt_port: int,
    http_port: int,
    data_dir: Path,
    receiver_url: str,
    receiver_secret: str,
    robots: list[dict[str, Any]] | None = None,
    voice: dict[str, Any] | None = None,
    voice_after_s: float = 30.0,
) -> tuple[FiregridConfig, DemoTokens]:
    """The config with the demo's overrides (see the module docstring); the community and rules are kept."""
    from pydantic import SecretStr

    from alerts.config import (
        DrillReceivers,
        LinksConfig,
        NotifyConfig,
        RobotConfig,
        Route,
        Tier,
        VoiceConfig,
        WebhookConfig,
    )

    tokens = list(config.http.tokens)
    picked: dict[str, str] = {}
    for role in ("viewer", "operator"):
        token = _unscoped(tokens, role)
        if token is None:  # the config has none: make one for this run
            token = ApiToken(name=f"demo-{role}", token=SecretStr(secrets.token_urlsafe(16)), role=role)
            tokens.append(token)
        picked[role] = token.token.get_secret_value()
    webhook = WebhookConfig(
        name="demo-receiver",
        url=receiver_url,
        secret=SecretStr(receiver_secret),
        allow_private=True,  # the receiver is on loopback: allowed explicitly, for the demo only
        events=["*"],
        min_severity="warning",
        timeout_s=5.0,
    )
    robot_names = [r["name"] for r in robots or []]
    routes = [Route(name="demo-groups", min_severity="warning", tiers=[Tier(robots=robot_names)])] if robots else []
    if voice is not None and robots:
        # The last rung: a fire nobody acknowledges within voice_after_s phones the duty officer (through the
        # demo's voice stand-in; the roster's numbers reach nothing else).
        routes.append(
            Route(
                name="demo-voice",
                min_severity="fire",
                ack_timeout_s=voice_after_s,
                tiers=[Tier(robots=robot_names), Tier(roles=["duty_officer"], voice=True)],
            )
        )
    notify = NotifyConfig(
        timezone=config.notify.timezone,
        # The roster stays (the stations panel shows who is on duty, dispatch names who it sends) but there is no SMS
        # (a dispatch's pages are put on the timeline with channel "none") and the only calls are the voice tier's,
        # answered by the demo's stand-in.
        roster=config.notify.roster,
        webhooks=[webhook],
        # The demo's group robots (a WeCom and a DingTalk stand-in on the local receiver) hear of every drill,
        # each message with an action link to this gateway's small mobile page.
        robots=[RobotConfig.model_validate(r) for r in robots or []],
        # A route of robots only: the groups hear of every incident; a fire left unacknowledged goes on to the voice
        # tier, whose calls reach only the demo's stand-in provider, so still nobody's phone rings.
        routes=routes,
        voice=VoiceConfig.model_validate(voice) if voice is not None else None,
        links=LinksConfig(base_url=f"http://127.0.0.1:{http_port}", secret=SecretStr(secrets.token_urlsafe(32))),
        drill_receivers=DrillReceivers(webhooks=[webhook], robots=robot_names),
        retry=config.notify.retry.model_copy(update={"base_s": 0.5, "max_s": 10.0}),
    )
    updated = config.model_copy(
        update={
            "mqtt": config.mqtt.model_copy(
                update={
                    "url": f"mqtt://127.0.0.1:{mqtt_port}",
                    "protocol": "v311",  # amqtt 0.12 refuses MQTT 5 CONNECTs ("Unsupported protocol version")
                    "username": None,
                    "password": None,
                    "tls": None,
                    "shared_group": None,
                    "client_id": "firegrid-demo-gateway",
                }
            ),
            "influx": config.influx.model_copy(update={"url": None, "spool_dir": data_dir / "spool"}),
            "store": config.store.model_copy(update={"path": data_dir / "firegrid.sqlite"}),
            "http": config.http.model_copy(update={"listen": f"127.0.0.1:{http_port}", "tokens": tokens}),
            "notify": notify,
            # The QR links point at this run's port; a community without a secret gets one for this run.
            "inspections": config.inspections.model_copy(
                update={
                    "public_url": f"http://127.0.0.1:{http_port}",
                    "secret": config.inspections.secret or SecretStr(secrets.token_urlsafe(24)),
                }
            ),
        }
    )
    return updated, DemoTokens(viewer=picked["viewer"], operator=picked["operator"])


# --- the embedded broker --------------------------------------------------------------------------------------------


async def start_broker(port: int) -> Broker:
    """amqtt on 127.0.0.1 only (a demo is not reachable from the network), anonymous, no $SYS noise."""
    from amqtt.broker import Broker
    from amqtt.contexts import BrokerConfig

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    config = BrokerConfig.from_dict(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    broker = Broker(config)
    await broker.start()
    return broker


# --- the webhook receiver -----------------------------------------------------------------------------------------


@dataclass
class WebhookReceiver:
    """A local Standard Webhooks receiver: verifies, prints, keeps the latest, tells the dashboard."""

    secret: str
    out: Callable[[str], None]
    publish: Callable[[str, Mapping[str, Any]], object] | None = None
    deliveries: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=KEEP_DELIVERIES)
    )
    seen: set[str] = field(default_factory=set)
    on_incident_opened: Callable[[Mapping[str, Any]], object] | None = None

    def app(self) -> web.Application:
        from simulators.receiver import WebhookReceiver as Receiver

        receiver = Receiver(path=RECEIVER_PATH, check=self.check, answer=self.answer)
        receiver.app.router.add_get("/deliveries", self.list)
        return receiver.app

    def check(self, headers: Mapping[str, str], body: bytes) -> str | None:
        return None if verify(self.secret, headers, body, now_s=time.time()) else "bad signature"

    async def answer(self, arrival: Arrival) -> web.Response:
        if arrival.problem is not None:
            self.out("webhook: REJECTED a delivery with a bad signature")
            return web.json_response({"error": "bad signature"}, status=401)
        msg_id = arrival.msg_id
        try:
            document = orjson.loads(arrival.body)
        except orjson.JSONDecodeError:
            return web.json_response({"error": "not JSON"}, status=400)
        duplicate = msg_id in self.seen  # a retry after a lost response: same id, printed once
        self.seen.add(msg_id)
        record = summarize(document, msg_id=msg_id, received_ms=int(time.time() * 1000), duplicate=duplicate)
        self.deliveries.append(record)
        if not duplicate:
            self.out(f"webhook: {record['line']}")
            if self.publish is not None:
                with contextlib.suppress(Exception):  # the live stream is a nicety; never fail the delivery
                    self.publish("webhook", record)
            data = document.get("data") if isinstance(document, dict) else None
            if record["type"] == "incident.opened" and isinstance(data, dict) and self.on_incident_opened is not None:
                self.on_incident_opened(data)
        return web.json_response({"ok": True})

    async def list(self, _: web.Request) -> web.Response:
        return web.json_response({"deliveries": list(reversed(self.deliveries))})


def _find(document: Any, *names: str) -> Any:
    """The first of ``names`` found in the payload or its ``data`` / ``data.alert`` objects."""
    layers = [document]
    if isinstance(document, dict):
        data = document.get("data")
        if isinstance(data, dict):
            layers.append(data)
            for key in ("alert", "incident"):
                if isinstance(data.get(key), dict):
                    layers.append(data[key])
    for layer in layers:
        if isinstance(layer, dict):
            for name in names:
                if layer.get(name) is not None:
                    return layer[name]
    return None


def summarize(document: Any, *, msg_id: str, received_ms: int, duplicate: bool) -> dict[str, Any]:
    event = _find(document, "type", "event") or "?"
    severity = _find(document, "severity")
    building = _find(document, "building")
    floor = _find(document, "floor")
    device = _find(document, "device")
    reason = _find(document, "reason", "rule", "description")
    where = " ".join(str(p) for p in (building, f"{floor}F" if floor is not None else None, device) if p)
    line = " ".join(str(p) for p in (event, str(severity).upper() if severity else None, where, reason) if p)
    return {
        "id": msg_id,
        "type": event,
        "severity": severity,
        "building": building,
        "floor": floor,
        "device": device,
        "received_ms": received_ms,
        "duplicate": duplicate,
        "line": line,
    }


# --- the simulated community ----------------------------------------------------------------------------------------


class CommunitySimulator:
    """The simulators package driving the config's community in real time, with a fire drill now and then."""

    def __init__(
        self,
        config: FiregridConfig,
        *,
        broker_url: str,
        seed: int,
        first_drill_s: float,
        drill_every_s: float,
        drill_length_s: float,
        out: Callable[[str], None],
        on_exit: Callable[[], object] = lambda: None,
    ) -> None:
        from simulators.clock import PacedClock, wall_ms
        from simulators.model import from_config
        from simulators.publish import BrokerTarget, PooledPublisher
        from simulators.sim import Simulation

        self.community = from_config(config)
        origins = self._drill_origins()
        if not origins:
            raise DemoError("the community has no smoke detector to hold fire drills at")
        self._origins = origins
        start = wall_ms()
        self.sim = Simulation(self.community, seed=seed, start_ms=start)
        self.clock = PacedClock(start_ms=start, speed=1.0)
        self.publisher = PooledPublisher(
            BrokerTarget.from_url(broker_url), connections=2, client_id="firegrid-demo-sim"
        )
        self.stop_event = threading.Event()
        self.drills = 0
        self._out = out
        self._on_exit = on_exit
        self._every_ms = int(drill_every_s * 1000)
        self._length_ms = int(drill_length_s * 1000)
        self.sim.at(start + int(first_drill_s * 1000), self._drill)
        self._thread = threading.Thread(target=self._run, name="demo-simulator", daemon=True)
        self.error: BaseException | None = None

    def _drill_origins(self) -> list[str]:
        """One smoke detector per building, buildings in turn, so each drill happens somewhere else."""
        seen: set[str] = set()
        origins = []
        for device in self.community.devices:
            if device.kind == "smoke" and device.building not in seen:
                seen.add(device.building)
                origins.append(device.id)
        return origins

    def _drill(self, now_ms: int) -> None:
        # Runs on the simulator's thread inside Simulation.advance: installing a scenario here is safe.
        from simulators.scenarios import parse_spec

        origin = self._origins[self.drills % len(self._origins)]
        self.drills += 1
        at_s = (now_ms - self.sim.start_ms) / 1000
        spec = f"fire@{origin}+{at_s:.3f}s/{self._length_ms // 1000}s"
        parse_spec(spec, self.community).install(self.sim)
        device = self.community.device(origin)
        where = f"{device.building} {device.floor}F" if device is not None else origin
        self._out(f"fire drill #{self.drills}: simulated fire at {where} ({origin}) for {self._length_ms // 1000} s")
        if self._every_ms > 0:
            self.sim.at(now_ms + self._every_ms, self._drill)

    def start(self) -> None:
        self.publisher.start()
        self._thread.start()

    def _run(self) -> None:
        from simulators.runner import drive

        try:
            drive(self.sim, end_ms=1 << 62, clock=self.clock, publisher=self.publisher, stop=self.stop_event)
        except BaseException as exc:  # reported by the demo, which then stops
            self.error = exc
            log.exception("the simulator stopped")
        finally:
            self._on_exit()

    def stop(self, *, timeout: float = 15.0) -> None:
        """Stop: every device says ``offline`` (retained), published and flushed before the broker goes."""
        self.stop_event.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.publisher.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


# --- the demo's duty room -------------------------------------------------------------------------------------------


class DutyRoom:
    """Plays the duty room of the demo: a while after a fire incident opens, it dispatches the nearest available
    station (as ``POST /api/v1/incidents/{id}/dispatch`` with no station does) and says whom and why; the operator
    on the dashboard does the rest (on scene, resolve), or the station's clock runs out and escalates.

    With ``miss_every`` n, every n-th fire is missed (nobody acknowledges it), so the demo shows the escalation
    ladder's last rung: the voice tier phones the duty officer, whose key press acknowledges."""

    def __init__(
        self,
        store: Any,
        *,
        delay_s: float,
        out: Callable[[str], None],
        clock_ms: Callable[[], int],
        miss_every: int = 0,
        voice_after_s: float | None = None,
    ) -> None:
        self.store = store
        self.delay_s = delay_s
        self.out = out
        self.clock_ms = clock_ms
        self.miss_every = miss_every
        self.voice_after_s = voice_after_s
        self.fires = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def incident_opened(self, data: Mapping[str, Any]) -> None:
        incident_id = data.get("id")
        if not isinstance(incident_id, int) or data.get("severity") != "fire":
            return
        self.fires += 1
        if self.miss_every > 0 and self.fires % self.miss_every == 0:
            after = f" after {self.voice_after_s:g} s" if self.voice_after_s is not None else ""
            self.out(
                f"dispatch: incident {incident_id} missed by the duty room (fire #{self.fires}): nobody acknowledges"
                f" it, so it goes to the voice tier{after}"
            )
            return
        task = asyncio.get_running_loop().create_task(self._dispatch(incident_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dispatch(self, incident_id: int) -> None:
        from alerts.dispatch import DispatchError
        from alerts.store import AlertStoreError

        await asyncio.sleep(self.delay_s)
        try:
            _, decision = await asyncio.to_thread(
                self.store.dispatch_incident, incident_id, actor="demo-duty-room", now_ms=self.clock_ms()
            )
        except (DispatchError, AlertStoreError) as exc:  # resolved meanwhile, or no station covers it
            self.out(f"dispatch: incident {incident_id} not dispatched: {exc}")
            return
        sent = decision.station or ", ".join(decision.members)
        self.out(f"dispatch: incident {incident_id} -> {sent} ({', '.join(decision.members)}): {decision.reason}")


# --- the demo -------------------------------------------------------------------------------------------------------


def console(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


async def demo(args: argparse.Namespace, config: FiregridConfig) -> int:
    from gateway.service.service import Service

    mqtt_port = choose_port(args.mqtt_port, DEFAULT_MQTT_PORT, "MQTT")
    http_port = choose_port(args.http_port, config.http.port, "HTTP")
    receiver_port = free_port()
    temp_dir = None
    if args.data_dir is None:
        temp_dir = Path(tempfile.mkdtemp(prefix="firegrid-demo-"))
        data_dir = temp_dir
    else:
        data_dir = args.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
    receiver_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver_url = f"http://127.0.0.1:{receiver_port}{RECEIVER_PATH}"
    robots = DemoRobots(out=console, publish=lambda kind, data: None)
    voice = DemoVoice(out=console, publish=lambda kind, data: None) if args.voice_after > 0 else None
    config, tokens = demo_config(
        config,
        mqtt_port=mqtt_port,
        http_port=http_port,
        data_dir=data_dir,
        receiver_url=receiver_url,
        receiver_secret=receiver_secret,
        robots=robots.robots(f"http://127.0.0.1:{receiver_port}"),
        voice=voice.voice(f"http://127.0.0.1:{receiver_port}") if voice is not None else None,
        voice_after_s=args.voice_after,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)

    broker: Broker | None = None
    service: Service | None = None
    service_task: asyncio.Task[int] | None = None
    receiver_runner: web.AppRunner | None = None
    simulator: CommunitySimulator | None = None
    feeder: PathsFeeder | None = None
    city: DemoConsole | None = None
    exit_code = 0
    try:
        try:
            broker = await start_broker(mqtt_port)
        except OSError as exc:
            raise DemoError(f"cannot start the embedded MQTT broker on port {mqtt_port}: {exc}") from None
        service_config, paths = with_other_paths(config, uitd_port=free_port())
        service = Service(service_config)
        receiver = WebhookReceiver(secret=receiver_secret, out=console, publish=service.hub.publish)
        if args.dispatch_after > 0 and config.stations:
            receiver.on_incident_opened = DutyRoom(
                service.store,
                delay_s=args.dispatch_after,
                out=console,
                clock_ms=lambda: int(time.time() * 1000),
                miss_every=2 if voice is not None else 0,
                voice_after_s=args.voice_after if voice is not None else None,
            ).incident_opened
        robots.publish = service.hub.publish
        receiver_app = receiver.app()
        robots.add_routes(receiver_app)
        if voice is not None:
            voice.publish = service.hub.publish
            voice.add_routes(receiver_app)
        receiver_runner = web.AppRunner(receiver_app, access_log=None)
        await receiver_runner.setup()
        await web.TCPSite(receiver_runner, "127.0.0.1", receiver_port).start()

        service_task = asyncio.create_task(service.run(), name="gateway")
        connected = asyncio.create_task(service.mqtt.wait_connected())
        started, _ = await asyncio.wait({connected, service_task}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
        if connected not in started:
            connected.cancel()
            if service_task in started:
                raise DemoError(f"the gateway stopped while starting: {service_task.exception()!r}")
            raise DemoError("the gateway did not connect to the embedded broker within 30 s")
        if voice is not None:
            voice.receipts_url = f"http://127.0.0.1:{service.http_port}/api/v1/voice/receipts"

        simulator_done = asyncio.Event()
        simulator = CommunitySimulator(
            config,
            on_exit=lambda: loop.call_soon_threadsafe(simulator_done.set),
            broker_url=config.mqtt.url,
            seed=args.seed,
            first_drill_s=args.first_drill,
            drill_every_s=args.drill_every,
            drill_length_s=args.drill_length,
            out=console,
        )
        # paho's first connect waits for the CONNACK synchronously, and the broker runs on this loop: use a thread.
        await asyncio.to_thread(simulator.start)
        feeder = PathsFeeder(
            service_config,
            paths,
            api=f"http://127.0.0.1:{service.http_port}",
            every_s=10.0,
            first_alarm_s=args.first_drill + args.drill_every / 2,
            alarm_every_s=args.drill_every,
            alarm_length_s=args.drill_length,
            out=console,
        )
        feeder.start()
        city = DemoConsole(service_config)
        city_url = await city.start()

        buildings = len(config.buildings)
        devices = len(config.devices)
        grids = len({b.grid for b in config.buildings})
        drills = f"a fire drill every {args.drill_every:g} s, the first in {args.first_drill:g} s"
        month = datetime.now(ZoneInfo(config.notify.timezone)).strftime("%Y-%m")
        banner = [
            "",
            "firegrid demo: a simulated community on this machine (nothing leaves it, nobody is paged)",
            f"  community:        {buildings} buildings in {grids} grids, {devices} simulated devices; {drills}",
            f"  dashboard:        http://127.0.0.1:{service.http_port}/",
            f"  city console:     {city_url} (firegrid console: the same screen served from the store, as a command"
            " centre runs it over many gateways)",
            f"  viewer token:     {tokens.viewer}",
            f"  operator token:   {tokens.operator}",
            f"  API docs:         http://127.0.0.1:{service.http_port}/docs",
            f"  MQTT broker:      mqtt://127.0.0.1:{mqtt_port} (embedded amqtt, MQTT 3.1.1)",
            "  fast lane:        alarm and call-point events on their own session"
            f" ({service.config.mqtt.client_id}-events), ahead of any telemetry backlog"
            if service.events is not None
            else "  fast lane:        off (mqtt.event_lane: false): every channel on one session",
            f"  webhook receiver: {receiver_url} (deliveries: http://127.0.0.1:{receiver_port}/deliveries)",
            f"  group robots:     WeCom and DingTalk stand-ins on http://127.0.0.1:{receiver_port} (drills, with"
            " action links)",
            *(
                [
                    f"  voice tier:       a fire unacknowledged for {args.voice_after:g} s phones the duty officer"
                    f" (every second fire is missed; Aliyun voice stand-in on http://127.0.0.1:{receiver_port}, key 1"
                    " acknowledges)"
                ]
                if voice is not None
                else []
            ),
            f"  other paths:      UITD (GB/T 26875.3) {paths.uitd_listen}, panel of {paths.panel_building}; OneNET, "
            f"CTWing and HTTP pushes to http://127.0.0.1:{service.http_port}/api/v1/ingest/...",
            "  telemetry:        local store only (no InfluxDB configured)",
            f"  figures:          http://127.0.0.1:{service.http_port}/api/v1/reports/response"
            " (also /false-alarms, /devices; the strip on the dashboard; viewer token)",
            f"  monthly report:   http://127.0.0.1:{service.http_port}/api/v1/reports/monthly?month={month}&format=pdf"
            " (html, xlsx, csv, json; lang=en)",
            "  records:          firegrid report --config FILE --month YYYY-MM --out report.pdf;"
            " firegrid backup --config FILE --out backup.sqlite (docs/reports.md)",
            *inspection_lines(config),
            "Press Ctrl-C to stop.",
            "",
        ]
        print("\n".join(banner), flush=True)
        await first_inspection(service, out=console)

        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait()), service_task}
        if args.duration is not None:
            waits.add(asyncio.ensure_future(asyncio.sleep(args.duration)))
        watcher = asyncio.ensure_future(simulator_done.wait())
        waits.add(watcher)
        done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for future in pending:
            if future is not service_task:
                future.cancel()
        if service_task in done:
            console("the gateway stopped unexpectedly; stopping the demo")
            exit_code = 1
        elif watcher in done:
            console(f"the simulator stopped unexpectedly ({simulator.error!r}); stopping the demo")
            exit_code = 1
    except DemoError as exc:
        print(f"firegrid demo: {exc}", file=sys.stderr)
        exit_code = 1
    finally:
        console("stopping: simulator, gateway, console, webhook receiver, broker")
        if city is not None:
            await city.stop()
        if feeder is not None:
            await asyncio.to_thread(feeder.stop)
        if simulator is not None:
            await asyncio.to_thread(simulator.stop)
        if service is not None and service_task is not None:
            service.request_stop()
            try:
                code = await asyncio.wait_for(service_task, 30)
            except TimeoutError:
                console("the gateway did not stop within 30 s")
                code = 1
            except Exception as exc:
                console(f"the gateway failed: {exc!r}")
                code = 1
            exit_code = exit_code or code
        elif service is not None:
            await service.close()
        if voice is not None:
            await voice.close()
        if receiver_runner is not None:
            await receiver_runner.cleanup()
        if broker is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.shutdown(), 10)
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
        console("stopped" if exit_code == 0 else f"stopped (exit {exit_code})")
    return exit_code


def run(args: argparse.Namespace) -> int:
    config = load_or_exit(args.config)
    from gateway.service.logs import setup_logging

    # Human-readable logs on the console (the banner and notifications are the demo's output); warnings and up.
    setup_logging(level=args.log_level, fmt="text")
    logging.getLogger("firegrid.service").setLevel(logging.INFO)  # says "local store only (no InfluxDB)"
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        return asyncio.run(demo(args, config))
    except DemoError as exc:
        print(f"firegrid demo: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
