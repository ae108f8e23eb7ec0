"""The running gateway's parts, as handed to the HTTP API (``gateway.api.create_api_app(runtime)``).

Members (see also ``gateway/api/deps.py``):

* ``config``: the :class:`~gateway.config.FiregridConfig`.
* ``store``: the :class:`alerts.store.AlertStore` (alerts, incidents, lifecycle), or None if unavailable.
* ``presence``: :class:`gateway.storage.presence.Presence`: ``list_devices(*, now_ms, building=, grid=, kind=, state=,
  registered=, buildings=)`` and ``get_device(id, *, now_ms)`` -> dicts with ``id, building, kind, floor, grid,
  location, registered, last_seen_ms, last_values, battery, status, state ('online'|'offline'|'unknown'), online,
  heartbeat_s``; ``history(device, limit=)`` when there is no InfluxDB.
* ``rejections``: :class:`gateway.ingest.rejections.Rejections`: ``recent(limit)`` -> newest first, dicts with ``ts_ms,
  reason, detail, topic, building, device``; ``counts`` by reason.
* ``influx``: :class:`gateway.storage.influx.InfluxWriter` with ``async query(influxql) -> list[dict]`` (rows with the
  series' tags merged in, ``time`` in epoch ms), or None when ``influx.url`` is null (demo).
* ``engine`` and ``engine_lock``: the rules engine; hold the lock (``async with runtime.engine_lock``) around
  ``set_maintenance`` / ``clear_maintenance`` so a change never interleaves with a batch.
* ``hub``: the SSE hub (``gateway.api.hub.Hub``); the gateway publishes ``device`` events (presence changes).
* ``metrics``: :class:`gateway.metrics.Metrics` (Prometheus registry).
* ``apply_transitions``: ``await runtime.apply_transitions(transitions)`` persists transitions the API caused
  (``engine.set_maintenance`` / ``clear_maintenance`` return some) through the gateway's commit sequence, so they
  reach the store, InfluxDB and the notifier like any other.
* ``inspections``, ``deadlines``: the inspection store and its deadline checks (``gateway.storage.inspections``).
* ``mqtt``, ``pipeline``, ``dead_letters``, ``started_ms``: for ``/readyz`` and diagnostics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.config import FiregridConfig
from gateway.metrics import Metrics

# Named for the type checker only: the HTTP API imports this module, and the parts (the hub among them) import
# nothing of it back, so the runtime stays cheap to import and free of cycles.
if TYPE_CHECKING:
    from alerts.delivery import Notifier
    from alerts.inspections.store import InspectionStore
    from alerts.store import AlertStore
    from gateway.api.hub import Hub
    from gateway.ingest.mqtt import MqttIngest
    from gateway.ingest.pipeline import Pipeline
    from gateway.ingest.rejections import Rejections
    from gateway.storage.influx import DeadLetters, InfluxWriter
    from gateway.storage.inspections import InspectionDeadlines
    from gateway.storage.presence import Presence
    from rules.engine import Engine
    from rules.types import AlertTransition


@dataclass
class Runtime:
    config: FiregridConfig
    metrics: Metrics
    store: AlertStore | None = None
    presence: Presence | None = None
    rejections: Rejections | None = None
    influx: InfluxWriter | None = None
    engine: Engine | None = None
    engine_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hub: Hub | None = None
    notifier: Notifier | None = None
    mqtt: MqttIngest | None = None
    pipeline: Pipeline | None = None
    dead_letters: DeadLetters | None = None
    apply_transitions: Callable[[list[AlertTransition]], Awaitable[None]] | None = None
    started_ms: int = 0
    # Inspections and hazards (``alerts.inspections.store``) and their deadline checks; the API builds both from
    # ``store`` when the gateway gave none.
    inspections: InspectionStore | None = None
    deadlines: InspectionDeadlines | None = None
