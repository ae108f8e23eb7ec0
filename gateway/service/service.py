"""``firegrid run --config FILE``: the service.

Composition (one process; the notifier on a thread with its own event loop):

    MQTT (aiomqtt, manual ack) -> Pipeline (decode, dedup, presence, rules engine)
        -> group commit [spool append + AlertStore.apply + engine snapshots] -> PUBACK
    spool -> InfluxWriter -> InfluxDB            (off the acknowledgement path)
    AlertStore outbox -> Notifier -> webhooks/SMS (alerts package)
    aiohttp: /api/v1 (gateway.api), /healthz, /readyz, /metrics

SIGTERM: stop reading MQTT, commit and acknowledge what was already taken in, publish the retained ``offline``,
write to InfluxDB what can be written in a few seconds (the rest stays spooled for the next start), exit 0.
Nothing that was not handed off is acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import itertools
import logging
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from alerts.delivery import Notifier
from alerts.inspections.store import InspectionStore
from alerts.store import AlertStore
from common.gc_pause import gc_paused
from common.migrations import SchemaError
from common.pg import StoreUnreachable
from gateway.api import create_api_app
from gateway.api.hub import Hub
from gateway.api.ingest import add_ingest_routes
from gateway.api.runtime import Runtime
from gateway.config import ConfigError, FiregridConfig, exit_with_problems, load_or_exit
from gateway.ingest.contract import Decoder, policy_from_config, registry_from_config
from gateway.ingest.dedup import Dedup
from gateway.ingest.filter_ledger import FilterLedger
from gateway.ingest.mqtt import CHANNELS, EVENT_CHANNELS, EVENT_LANE, MAIN_CHANNELS, MqttIngest
from gateway.ingest.pipeline import EngineState, Job, Pipeline, restore_engine
from gateway.ingest.rejections import Rejections
from gateway.ingest.uitd_server import UitdServer
from gateway.metrics import Metrics
from gateway.service.cluster import ClusterMode
from gateway.service.logs import setup_logging
from gateway.service.ops import add_ops_routes
from gateway.service.supervise import until_stop_or_failure
from gateway.storage.influx import DeadLetters, InfluxError, InfluxWriter
from gateway.storage.inspections import InspectionDeadlines
from gateway.storage.presence import Presence
from gateway.storage.retention import Retention
from gateway.storage.spool import Spool
from rules.engine import Engine
from rules.loader import load_rule_set

log = logging.getLogger("firegrid.service")

SHUTDOWN_COMMIT_S = 10.0
SHUTDOWN_INFLUX_S = 5.0
# Cluster mode: a member that stops may not come back (a scale-down), and no other member can send its spool, so it
# waits longer for InfluxDB before leaving the rest for its next start.  Its partitions are handed over before this.
SHUTDOWN_INFLUX_CLUSTER_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="the YAML config file")


def run(args: argparse.Namespace) -> int:
    with gc_paused():
        config = load_or_exit(args.config)
    setup_logging(level=config.log.level, fmt=config.log.format)
    try:
        return asyncio.run(serve(config))
    except ConfigError as exc:  # the rules or notify sections, validated by their owners at start-up
        exit_with_problems(exc.problems)
    except SchemaError as exc:  # a store from a newer release, or a migration that failed: nothing was changed
        exit_with_problems([str(exc)])
    except StoreUnreachable as exc:  # store.url: the PostgreSQL server is down, or refused us
        exit_with_problems([str(exc)])
    except KeyboardInterrupt:
        return 130


def build_http_app(runtime: Runtime) -> web.Application:
    app = create_api_app(runtime)
    add_ops_routes(app, runtime)
    add_ingest_routes(app, runtime)
    if runtime.cluster_status is not None:
        app.middlewares.append(_no_http_ingest_in_cluster_mode)
    return app


@web.middleware
async def _no_http_ingest_in_cluster_mode(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Cluster mode: telemetry pushed over HTTP would be judged here, by whichever member the request reached, not
    by its building's owner; until the push is re-published into the broker's partitions it is refused, clearly."""
    if request.path.startswith("/api/v1/ingest"):
        reason = "not available in cluster mode: devices and platforms publish to the MQTT broker"
        return web.json_response(
            {"error": "not available in cluster mode", "reason": reason, "status": 409}, status=409
        )
    return await handler(request)


class Service:
    """Everything ``firegrid run`` starts, so tests and benches can run it in-process too."""

    def __init__(self, config: FiregridConfig) -> None:
        district = config
        # With mqtt.buildings, everything below is built from this gateway's own buildings and devices only
        config = config.owned()
        self.config = config
        self.metrics = Metrics()
        db_path = config.resolve_path(config.store.path)
        registry = registry_from_config(config)
        # the decoder knows the whole district, so a device publishing under a building not its own is still
        # `wrong_building` when its own building belongs to another gateway
        decoder_registry = registry if district is config else registry_from_config(district)
        self.presence = Presence(config=config, db_path=db_path)
        self.rejections = Rejections(metrics=self.metrics)
        # Cluster mode: the engine judges only the buildings of the partitions this gateway holds a lease on, adopted
        # and released as the leases move (gateway/service/cluster.py).
        self.engine = Engine(load_rule_set(config), registry=registry, owned=() if config.cluster else None)
        self.store = AlertStore.from_config(config)
        self.notifier = Notifier(self.store, config.notify)
        self._notifier_thread = NotifierThread(self.notifier)
        self.engine_state = EngineState(db_path, url=config.store.url)
        self.retention = Retention(db_path, config=config.retention, url=config.store.url)
        # Side work that must never stop the gateway (retention, creating the InfluxDB database): cancelled at
        # shutdown, and its ending is not a reason to stop.
        self._side_tasks: list[asyncio.Task[None]] = []
        self.hub = Hub()
        self.spool: Spool | None = None
        self.writer: InfluxWriter | None = None
        self.dead_letters: DeadLetters | None = None
        if config.influx.url:
            self.spool = Spool(
                config.resolve_path(config.influx.spool_dir), max_bytes=config.influx.spool_max_mb * 1_048_576
            )
            self.dead_letters = DeadLetters(db_path)
            self.writer = InfluxWriter(
                config=config.influx, spool=self.spool, dead_letters=self.dead_letters, metrics=self.metrics
            )
            spool = self.spool
            self.metrics.set_spool_source(lambda: (spool.pending_points, spool.size_bytes, spool.oldest_pending_ts()))
        else:
            self.presence.keep_history = True
        self.runtime = Runtime(
            config=config,
            metrics=self.metrics,
            store=self.store,
            presence=self.presence,
            rejections=self.rejections,
            influx=self.writer,
            engine=self.engine,
            hub=self.hub,
            notifier=self.notifier,
            dead_letters=self.dead_letters,
            started_ms=int(time.time() * 1000),
        )
        self.pipeline = Pipeline(
            decoder=Decoder(
                prefix=config.mqtt.topic_prefix, registry=decoder_registry, policy=policy_from_config(config)
            ),
            dedup=Dedup(window_ms=config.contract.replay_window_s * 1000),
            rejections=self.rejections,
            presence=self.presence,
            metrics=self.metrics,
            engine=self.engine,
            engine_lock=self.runtime.engine_lock,
            alert_store=self.store,
            engine_state=self.engine_state,
            spool=self.spool,
            on_committed=self._committed,
            ack=self._ack,
            ack_events=self._ack_events,
            ack_lanes=self._ack_lanes,
            gateway_topics=f"{config.mqtt.topic_prefix}/_gateway/",
        )
        lane = config.mqtt.event_lane
        self.mqtt = MqttIngest(
            config=config.mqtt,
            metrics=self.metrics,
            on_message=self.pipeline.submit,
            ledger=FilterLedger(db_path),
            channels=MAIN_CHANNELS if lane else CHANNELS,
        )
        # The fast lane: alarms and call points on their own session, which the telemetry backlog cannot hold up.
        self.events: MqttIngest | None = None
        if lane:
            self.events = MqttIngest(
                config=config.mqtt,
                metrics=self.metrics,
                on_message=self.pipeline.submit,
                ledger=FilterLedger(db_path, namespace="events"),
                channels=EVENT_CHANNELS,
                lane=EVENT_LANE,
            )
        self.mqtt.on_link = self._link_changed
        if self.events is not None:
            events, pipeline = self.events, self.pipeline
            # While the fast lane has something to read (or an alarm waits for stage 1), the telemetry session's
            # reader and stage 1's telemetry batch end their slices early (docs/performance.md, "The fast lane").
            self.mqtt.urgent = lambda: bool(pipeline.priority) or events.has_input()
            self.pipeline.hurry = events.has_input
        # Cluster mode: one session per owned partition instead of the two above, which are then never started.
        self.cluster: ClusterMode | None = None
        if config.cluster is not None:
            assert config.store.url is not None  # the config's validators require it
            self.cluster = ClusterMode(
                config=config,
                cluster=config.cluster,
                url=config.store.url,
                metrics=self.metrics,
                engine=self.engine,
                engine_lock=self.runtime.engine_lock,
                engine_state=self.engine_state,
                store=self.store,
                presence=self.presence,
                notifier=self.notifier,
                pipeline=self.pipeline,
            )
            self.runtime.cluster_status = self.cluster.status
        self.uitd: UitdServer | None = None
        if config.uitd.listen is not None:
            # With mqtt.buildings, only this gateway's panels: another's UITD is denied (unknown_panel) rather than
            # confirmed and its alarms judged nowhere
            panels = [p for p in config.uitd.panels if config.owns(p.building)]
            self.uitd = UitdServer(
                config=config.uitd.model_copy(update={"panels": panels}),
                prefix=config.mqtt.topic_prefix,
                submit=self.pipeline.submit,
                rejections=self.rejections,
                metrics=self.metrics,
            )
        self.pipeline.on_backlog = self._flow_control
        self.runtime.mqtt = self.mqtt
        self.runtime.mqtt_events = self.events
        self.runtime.pipeline = self.pipeline
        self.runtime.apply_transitions = self.pipeline.submit_transitions
        # Inspections and hazards share the alert store's file and outbox; their overdue alerts go through the
        # pipeline's commit like the engine's.
        self.inspections = InspectionStore(self.store, config=config.inspections, on_commit=self.notifier.wake)
        self.deadlines = InspectionDeadlines(
            config=config, store=self.inspections, presence=self.presence, apply=self.pipeline.submit_transitions
        )
        self.runtime.inspections = self.inspections
        self.runtime.deadlines = self.deadlines
        hub = self.hub

        def device_changed(device: dict[str, Any]) -> None:
            hub.publish("device", {**device, "device": device["id"], "ts_ms": int(time.time() * 1000)})

        self.presence.on_change = device_changed
        self._stop = asyncio.Event()
        self._http: web.AppRunner | None = None
        self.http_port: int | None = None
        self._restore_engine()

    def _restore_engine(self) -> None:
        """Part of start-up (``serve`` builds the service with the cyclic GC paused, then freezes what it built):
        the engine's snapshots and open alerts, then every registered device's state.  Here, not on the pipeline's
        first tick, where a district's adoption stalls the running event loop, alarms included (docs/performance.md).
        """
        if self.cluster is not None:
            return  # the engine owns nothing yet: each partition's buildings are adopted when its lease is won
        buildings, active = restore_engine(
            self.engine, state=self.engine_state, alert_store=self.store, owns=self.config.owns
        )
        log.info("engine restored: %d buildings from snapshots, %d active alerts seeded", buildings, active)
        now = int(time.time() * 1000)
        # Until the broker link is up, silence says nothing about the devices (a gateway down for ten minutes
        # must not find the whole district "silent" on start): every device's period restarts on connect.
        self.engine.suspend_presence(now)
        self.engine.start(now)
        snapshots = self.engine.dirty_snapshots()
        if snapshots:
            self.engine_state.save(snapshots, at_ms=now)

    # --- wiring ------------------------------------------------------------------------------------------------

    def _ack(self, items: list[tuple[int, int]]) -> int:
        return self.mqtt.ack(items)

    def _ack_events(self, items: list[tuple[int, int]]) -> int:
        return self.events.ack(items) if self.events is not None else 0

    def _ack_lanes(self, acks: Mapping[int, list[tuple[int, int]]]) -> int:
        return self.cluster.ingest.ack(acks) if self.cluster is not None else 0

    def _link_changed(self, connected: bool) -> None:
        """Hold the engine's absence timers while the gateway has no broker link (see MqttIngest.on_link).

        Called in the event loop thread, where the pipeline also runs the engine, so no lock is needed.
        """
        now = int(time.time() * 1000)
        if connected:
            self.engine.resume_presence(now)
        else:
            log.info("broker link lost: device absence timers held until it returns")
            self.engine.suspend_presence(now)

    def _committed(self, job: Job) -> None:
        if self.writer is not None and (job.telemetry or job.alerts):
            self.writer.wake()
        if job.transitions:
            self.notifier.wake()

    def _flow_control(self, backlog: int) -> None:
        if self.cluster is not None:
            self.cluster.flow_control(backlog, high_water=self.mqtt.high_water, low_water=self.mqtt.low_water)
            return
        if backlog >= self.mqtt.high_water:
            self.mqtt.pause()
        elif backlog <= self.mqtt.low_water and self.mqtt.paused:
            self.mqtt.resume()
        events = self.events
        if events is not None and (events.paused or self.pipeline.priority):  # called per message: usually nothing
            # the fast lane is paused only by its own queue (a device flooding events), never by telemetry
            queued = len(self.pipeline.priority)
            if queued >= events.high_water:
                events.pause()
            elif queued <= events.low_water and events.paused:
                events.resume()

    async def _housekeeping(self) -> None:
        """Every second: presence's sweep (in ten slices, a tenth of the devices every 100 ms) and its flush."""
        slices = 10
        for turn in itertools.count(1):
            await asyncio.sleep(1.0 / slices)
            now = int(time.time() * 1000)
            self.presence.sweep(now_ms=now, limit=-(-len(self.presence.devices) // slices) or 1)
            if turn % slices == 0:
                await asyncio.to_thread(self.presence.flush)

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    async def start_http(self) -> None:
        app = build_http_app(self.runtime)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        site = web.TCPSite(self._http, self.config.http.host, self.config.http.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.config.http.port

    async def run(self) -> int:
        owned = self.config.mqtt.buildings
        if owned:
            log.info(
                "this gateway owns %d buildings (mqtt.buildings), %d registered devices: %s%s",
                len(owned),
                len(self.config.devices),
                ", ".join(owned[:10]),
                ", ..." if len(owned) > 10 else "",
            )
        if self.writer is None:
            log.info("influx.url is null: telemetry is kept in the local store only (no InfluxDB writes)")
        await self.start_http()
        log.info("HTTP listening on %s:%s", self.config.http.host, self.http_port)
        if self.uitd is not None:
            await self.uitd.start()
        tasks: dict[str, asyncio.Task[None]] = {
            "pipeline": asyncio.create_task(self.pipeline.run(), name="pipeline"),
            "housekeeping": asyncio.create_task(self._housekeeping(), name="housekeeping"),
        }
        if self.cluster is not None:
            await self.cluster.start()
            tasks["cluster"] = asyncio.create_task(self.cluster.watch(), name="cluster")
        else:
            tasks["mqtt"] = asyncio.create_task(self.mqtt.run(), name="mqtt")
            if self.events is not None:
                tasks["mqtt-events"] = asyncio.create_task(self.events.run(), name="mqtt-events")
        if self.writer is not None:
            tasks["influx"] = asyncio.create_task(self.writer.run(), name="influx")
        tasks["notifier"] = asyncio.create_task(self._notifier_thread.run(), name="notifier")
        self._side_tasks.append(asyncio.create_task(self.retention.run(), name="retention"))
        if self.writer is not None and self.config.influx.create_database:
            self._side_tasks.append(asyncio.create_task(self._ensure_influx_database(), name="influx-database"))
        tasks["inspections"] = asyncio.create_task(self.deadlines.run(), name="inspections")
        try:
            exit_code = await until_stop_or_failure(tasks, self._stop, log=log)
        finally:
            await self._shutdown(tasks)
        return exit_code

    async def _ensure_influx_database(self) -> None:
        """Create the InfluxDB database with its retention policy (retention.influx_days), retrying while InfluxDB
        is unreachable; the writer's points wait in the spool meanwhile."""
        assert self.writer is not None
        delay = 1.0
        while True:
            try:
                policy = await self.writer.client.ensure_database(retention_days=self.config.retention.influx_days)
            except InfluxError as exc:
                if not exc.retryable:
                    log.error("could not create the InfluxDB database: %s", exc)
                    return
                log.warning("InfluxDB database not created yet (%s); retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 60.0)
                continue
            log.info(
                "InfluxDB database %r ready, retention policy %r keeps %s",
                self.config.influx.database,
                policy,
                f"{self.config.retention.influx_days} days" if self.config.retention.influx_days else "forever",
            )
            return

    async def _shutdown(self, tasks: dict[str, asyncio.Task[None]]) -> None:
        log.info("shutting down: committing and acknowledging what was taken in")
        for side in self._side_tasks:
            side.cancel()
            with contextlib.suppress(BaseException):
                await side
        self.mqtt.pause()  # take nothing more in
        if self.cluster is not None:
            self.cluster.pause()
        if self.events is not None:
            self.events.pause()
        if self.uitd is not None:
            self.uitd.stop_listening()
        self.pipeline.stop()
        pipeline = tasks["pipeline"]
        if not pipeline.done():
            try:
                await asyncio.wait_for(asyncio.shield(pipeline), SHUTDOWN_COMMIT_S)
            except TimeoutError:
                log.warning(
                    "pipeline did not drain in %.0f s; unacknowledged messages will be redelivered", SHUTDOWN_COMMIT_S
                )
            except Exception:
                pass
        # Read the socket again so the retained "offline" gets its PUBACK; whatever else arrives now is not
        # processed and therefore never acknowledged (the broker keeps it for the next start).
        self.pipeline.closed = True
        if self.uitd is not None:
            await self.uitd.close()  # after the drain: the confirms of what was committed have gone out
        if self.cluster is not None:
            # Hand every partition over: what was taken in is committed and acknowledged above, so the sessions close
            # with nothing in flight and peers take the leases (and the queues) at once.
            try:
                await asyncio.wait_for(self.cluster.stop(), SHUTDOWN_COMMIT_S)
            except (TimeoutError, Exception) as exc:
                log.warning("cluster hand-over incomplete (%r): peers take the leases when they expire", exc)
            cluster_task = tasks.get("cluster")
            if cluster_task is not None:
                cluster_task.cancel()
                with contextlib.suppress(BaseException):
                    await cluster_task
        self.mqtt.resume()
        self.mqtt.stop()
        if self.events is not None:
            self.events.resume()
            self.events.stop()
        for name in ("mqtt", "mqtt-events"):
            session = tasks.get(name)
            if session is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(session), 5)
        if self.writer is not None:
            influx = tasks.get("influx")
            if influx is not None:
                influx.cancel()
                with contextlib.suppress(BaseException):
                    await influx
            await self.writer.drain(
                timeout_s=SHUTDOWN_INFLUX_CLUSTER_S if self.cluster is not None else SHUTDOWN_INFLUX_S
            )
            log.info("spool: %d points left for the next start", self.spool.pending_points if self.spool else 0)
        self.notifier.stop()
        notifier = tasks["notifier"]
        try:
            await asyncio.wait_for(asyncio.shield(notifier), 5)
        except (TimeoutError, Exception):
            self._notifier_thread.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(notifier), 5)
            notifier.cancel()
        for name in ("inspections", "housekeeping", "mqtt", "pipeline"):
            task = tasks.get(name)
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self._http is not None:
            await self._http.cleanup()
        await self.close()
        log.info("stopped")

    async def close(self) -> None:
        if self.writer is not None:
            await self.writer.close()
        self.presence.close()
        self.engine_state.close()
        self.retention.close()
        if self.spool is not None:
            self.spool.close()
        if self.dead_letters is not None:
            self.dead_letters.close()
        self.store.close()


class NotifierThread:
    """The notifier on its own thread and event loop.

    During a telemetry burst the ingest loop runs slices of socket reading and batch processing back to back; a
    webhook's start, its POST and its answer would each wait for such a slice.  On its own loop they wait at most
    for the interpreter's switch interval (5 ms).  The notifier already speaks to other threads only through its
    thread-safe entry points (``wake``, ``stop``, the store's hand-off and change listeners), and its database work
    runs on its own executor thread either way.
    """

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    async def run(self) -> None:
        """Run the notifier on its thread until it returns; re-raises what it raised."""
        caller = asyncio.get_running_loop()
        finished: asyncio.Future[None] = caller.create_future()

        def settle(error: BaseException | None) -> None:
            if finished.done():
                return
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

        def main() -> None:
            error: BaseException | None = None
            try:
                asyncio.run(self._main())
            except BaseException as exc:  # handed to the awaiting task, which decides
                error = exc
            with contextlib.suppress(RuntimeError):  # the service's loop is gone: nobody is waiting
                caller.call_soon_threadsafe(settle, error)

        self._thread = threading.Thread(target=main, name="notifier", daemon=True)
        self._thread.start()
        try:
            await asyncio.shield(finished)
        except asyncio.CancelledError:
            self.cancel()
            raise
        await asyncio.to_thread(self._thread.join, 5)  # settled: the thread is on its way out

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        try:
            await self.notifier.run()
        finally:
            self._loop = None

    def cancel(self) -> None:
        """Cut the notifier off (its requests in flight included), as cancelling its task did on the main loop."""
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop has just closed
                loop.call_soon_threadsafe(task.cancel)


def _pin_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Fix glibc's mmap threshold at its default, which turns off its dynamic adjustment.

    Otherwise the InfluxDB writer's large per-batch buffers move to the main heap, which keeps their space after each
    outage's backlog is drained (the soak's memory growth, docs/reliability.md).  A no-op off glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # <malloc.h> M_MMAP_THRESHOLD
    return bool(mallopt(ctypes.c_int(m_mmap_threshold), ctypes.c_int(threshold)))


async def serve(config: FiregridConfig) -> int:
    _pin_mmap_threshold()
    with gc_paused():
        service = Service(config)
    # What start-up built (config, registry, presence, engine) lives as long as the process: freeze it out of the
    # cyclic GC, so that a full collection no longer walks it and stalls the event loop (docs/performance.md).
    gc.collect()
    gc.freeze()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, service.request_stop)
    return await service.run()
