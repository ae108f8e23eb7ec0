"""The running gateway's parts, as handed to the HTTP API (``gateway.api.create_api_app(runtime)``).

Each member is the real class (go to its definition); every one but ``config`` and ``metrics`` may be None, and a
route whose dependency is missing answers ``503 Service Unavailable`` as a problem document instead of failing.
Notes the types do not say:

* ``presence``: routes read its records (``presence.devices``) directly, never across an ``await``.
* ``influx``: None when ``influx.url`` is null (the demo): device history then comes from ``presence.history``.
* ``engine`` and ``engine_lock``: hold the lock (``async with runtime.engine_lock``) around ``set_maintenance`` /
  ``clear_maintenance`` so a change never interleaves with a batch.
* ``hub``: the gateway publishes ``device`` events (presence changes) to it; the API creates one when it is None.
* ``apply_transitions``: ``await runtime.apply_transitions(transitions)`` persists transitions the API caused
  (maintenance windows) through the gateway's commit sequence, so they reach the store, InfluxDB and the notifier
  like any other.
* ``inspections``, ``deadlines``: the inspection store and its deadline checks (``gateway.storage.inspections``).
* ``mqtt``, ``pipeline``, ``dead_letters``, ``started_ms``: for ``/readyz`` and diagnostics.
* ``live_from_store``: True in ``firegrid console``, whose hub is fed from the store's change log (every change,
  its own included): the API then does not also publish the store changes it makes itself, which would show them
  twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
    mqtt_events: MqttIngest | None = None  # the fast lane's session (mqtt.event_lane), None when it is off
    pipeline: Pipeline | None = None
    dead_letters: DeadLetters | None = None
    apply_transitions: Callable[[list[AlertTransition]], Awaitable[None]] | None = None
    started_ms: int = 0
    # Inspections and hazards (``alerts.inspections.store``) and their deadline checks; the API builds both from
    # ``store`` when the gateway gave none.
    inspections: InspectionStore | None = None
    deadlines: InspectionDeadlines | None = None
    live_from_store: bool = False
    # Cluster mode: the member's leases and partition sessions, for ``/readyz`` (gateway/service/cluster.py).
    cluster_status: Callable[[], dict[str, Any]] | None = None
