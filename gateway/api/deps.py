"""What the HTTP API needs from the rest of the gateway, as structural types.

The API is written against these Protocols rather than the concrete classes so that it does not import the MQTT
pipeline, and so that the alert store, presence registry and engine can evolve without touching routes.  The concrete
objects are assembled by ``gateway/api/runtime.py`` (``Runtime``) and handed to :func:`gateway.api.create_api_app`.

Every member except ``config`` is optional on the runtime: a route whose dependency is missing answers
``503 Service Unavailable`` as a problem document instead of failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from gateway.config import FiregridConfig


@runtime_checkable
class AlertStoreLike(Protocol):
    def get_alert(self, alert_id: Any) -> Any: ...

    def list_alerts(self, **filters: Any) -> Sequence[Any]: ...

    def list_incidents(self, **filters: Any) -> Sequence[Any]: ...

    def active_alerts(self) -> Iterable[Any]: ...

    def acknowledge(self, alert_id: Any, *, by: str, note: str | None, now_ms: int) -> Any: ...

    def dispatch(self, alert_id: Any, *, by: str, to: str, note: str | None, now_ms: int) -> Any: ...

    def resolve(self, alert_id: Any, *, by: str, cause: str, note: str | None, now_ms: int) -> Any: ...

    def add_listener(self, callback: Any) -> Any: ...


class PresenceLike(Protocol):
    def list_devices(self, *args: Any, **kwargs: Any) -> Iterable[Any]: ...

    def get_device(self, device_id: str) -> Any: ...


class RejectionsLike(Protocol):
    def recent(self, limit: int) -> Sequence[Any]: ...


class InfluxLike(Protocol):
    async def query(self, influxql: str) -> list[dict[str, Any]]: ...


class EngineLike(Protocol):
    def set_maintenance(self, window: Any) -> Any: ...

    def clear_maintenance(self, window_id: str) -> Any: ...


class HubLike(Protocol):
    def publish(self, event_type: str, data: Mapping[str, Any]) -> Any: ...


class RuntimeLike(Protocol):
    config: FiregridConfig
    store: AlertStoreLike | None
    presence: PresenceLike | None
    rejections: RejectionsLike | None
    influx: InfluxLike | None
    engine: EngineLike | None
    engine_lock: asyncio.Lock | None
    hub: Any
