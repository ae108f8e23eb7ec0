"""What the HTTP API needs from the running gateway: :class:`ApiRuntime`.

The gateway's ``gateway.api.runtime.Runtime`` is one; the API reads it through this Protocol so that it never
imports the MQTT pipeline.  Every member except ``config`` may be None: a route whose dependency is missing answers
``503 Service Unavailable`` as a problem document instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from alerts.store import AlertStore
from gateway.config import FiregridConfig
from rules.types import AlertTransition


class ApiRuntime(Protocol):
    @property
    def config(self) -> FiregridConfig: ...

    @property
    def store(self) -> AlertStore | None: ...

    # The gateway's ``gateway.storage.presence.Presence`` (read straight from its records), or anything with
    # ``list_devices(*, now_ms)``, ``get_device(id, *, now_ms)`` and optionally ``history(id, *, limit)``.
    @property
    def presence(self) -> Any: ...

    # ``recent(limit)``: the newest rejected payloads first.
    @property
    def rejections(self) -> Any: ...

    # ``async query(influxql) -> list[dict]``.
    @property
    def influx(self) -> Any: ...

    # The rules engine: ``set_maintenance``, ``clear_maintenance``, ``maintenance()``.
    @property
    def engine(self) -> Any: ...

    @property
    def engine_lock(self) -> asyncio.Lock | None: ...

    # Persists transitions the API caused through the gateway's commit sequence (store, InfluxDB, notifier).
    @property
    def apply_transitions(self) -> Callable[[list[AlertTransition]], Awaitable[None]] | None: ...

    # Set by the API when the gateway gave none.
    hub: Any
