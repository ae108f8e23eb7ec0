"""The alert store: alerts with their audit trail, incidents, and the notification outbox, in one SQLite file.

Lifecycle: ``raised`` -> ``acknowledged`` -> ``dispatched`` -> ``resolved`` (with a cause).  Nothing is sent from
here: ``alerts.delivery.Notifier`` drains the outbox.  :class:`AlertStore` is the one door; behind it each part is a
module of functions over the shared :class:`~alerts.store.core.Core`: ``transitions`` (what the engine decided),
``commands`` (what operators do), ``queries``, ``outbox`` (the notifier's side), and :mod:`alerts.fanout` (who hears
of what).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from alerts.config import NotifyConfig
from alerts.records import (
    AlertChange,
    AlertDetail,
    AlertRecord,
    IncidentRecord,
    OutboxItem,
    OutboxRecord,
    Outcome,
)
from alerts.store import commands as _commands
from alerts.store import outbox as _outbox
from alerts.store import queries as _queries
from alerts.store import transitions as _transitions
from alerts.store.core import Core
from alerts.store.schema import open_db
from rules.types import AlertTransition


class AlertStore:
    """See the module docstring.  Thread-safe (one connection behind a lock): the gateway may call ``apply`` from
    its commit thread while the notifier and the API use the event loop."""

    def __init__(
        self,
        path: str | Path,
        *,
        notify: NotifyConfig | None = None,
        building_names: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self._core = Core(
            open_db(self.path), notify=notify or NotifyConfig(), building_names=dict(building_names or {})
        )
        self._closed = False

    @classmethod
    def from_config(cls, config: Any) -> AlertStore:
        """From a ``FiregridConfig`` (duck-typed: the alerts package does not import the gateway)."""
        path = config.resolve_path(config.store.path)
        names = {b.id: b.name for b in config.buildings}
        return cls(path, notify=config.notify, building_names=names)

    @property
    def notify(self) -> NotifyConfig:
        return self._core.notify

    @property
    def building_names(self) -> dict[str, str]:
        return self._core.building_names

    def close(self) -> None:
        with self._core.lock:
            if not self._closed:
                self._closed = True
                self._core.db.close()

    # ------------------------------------------------------------------ listeners
    def add_listener(self, callback: Callable[[AlertChange], None]) -> None:
        """``callback(change)`` after each committed change, in the thread that made it.  Keep it quick."""
        self._core.listeners.append(callback)

    def remove_listener(self, callback: Callable[[AlertChange], None]) -> None:
        if callback in self._core.listeners:
            self._core.listeners.remove(callback)

    def publish(self, change: AlertChange) -> None:
        """Tell listeners about something that is not a stored change (e.g. an SMS budget warning)."""
        self._core.publish([change])

    # ------------------------------------------------------------------ what the engine decided
    def apply(self, transitions: Iterable[AlertTransition], *, now_ms: int) -> list[AlertChange]:
        """Persist engine transitions, incident grouping and the outbox rows they cause, in ONE transaction."""
        return _transitions.apply(self._core, transitions, now_ms=now_ms)

    def next_escalation_ms(self) -> int | None:
        return _transitions.next_escalation_ms(self._core)

    def escalate_due(self, *, now_ms: int) -> list[AlertChange]:
        """Escalate every unacknowledged fire whose ack timeout has passed to its next tier."""
        return _transitions.escalate_due(self._core, now_ms=now_ms)

    # ------------------------------------------------------------------ what operators do
    def acknowledge(self, alert_id: int, *, by: str, note: str | None = None, now_ms: int) -> AlertChange:
        return _commands.acknowledge(self._core, alert_id, by=by, note=note, now_ms=now_ms)

    def dispatch(self, alert_id: int, *, by: str, to: str, note: str | None = None, now_ms: int) -> AlertChange:
        return _commands.dispatch(self._core, alert_id, by=by, to=to, note=note, now_ms=now_ms)

    def resolve(self, alert_id: int, *, by: str, cause: str, note: str | None = None, now_ms: int) -> AlertChange:
        return _commands.resolve(self._core, alert_id, by=by, cause=cause, note=note, now_ms=now_ms)

    def acknowledge_incident(
        self, incident_id: int, *, by: str, note: str | None = None, now_ms: int
    ) -> list[AlertChange]:
        """Acknowledge every still-``raised`` alert of an incident (an SMS reply acknowledges what it paged)."""
        return _commands.acknowledge_incident(self._core, incident_id, by=by, note=note, now_ms=now_ms)

    # ------------------------------------------------------------------ queries
    def get_alert(self, alert_id: int) -> AlertDetail | None:
        """One alert with its audit trail and evidence."""
        return _queries.get_alert(self._core, alert_id)

    def list_alerts(
        self,
        *,
        state: str | Sequence[str] | None = None,
        severity: str | int | None = None,
        building: str | Sequence[str] | None = None,
        grid: str | Sequence[str] | None = None,
        since_ms: int | None = None,
        open_only: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> list[AlertRecord]:
        """Newest first.  ``severity`` is a minimum; list-valued filters match any of the values (so that the API
        can apply a token's grid/building scope)."""
        return _queries.list_alerts(
            self._core,
            state=state,
            severity=severity,
            building=building,
            grid=grid,
            since_ms=since_ms,
            open_only=open_only,
            limit=limit,
            offset=offset,
        )

    def list_incidents(
        self,
        *,
        state: Literal["open", "resolved"] | None = None,
        building: str | Sequence[str] | None = None,
        grid: str | Sequence[str] | None = None,
        since_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[IncidentRecord]:
        return _queries.list_incidents(
            self._core, state=state, building=building, grid=grid, since_ms=since_ms, limit=limit, offset=offset
        )

    def active_alerts(self) -> list[AlertRecord]:
        """Every open (not yet resolved) alert, fire first: for restoring the engine and the dashboard."""
        return _queries.active_alerts(self._core)

    def incident_by_code(self, code: str) -> IncidentRecord | None:
        return _queries.incident_by_code(self._core, code)

    # ------------------------------------------------------------------ the outbox (used by the notifier)
    def recover(self, *, now_ms: int) -> int:
        """After a restart: an SMS caught in ``attempting`` becomes ``unknown``, never a blind resend."""
        return _outbox.recover(self._core, now_ms=now_ms)

    def due(
        self,
        *,
        now_ms: int,
        limit: int = 100,
        exclude: Iterable[int] = (),
        channel: str | None = None,
        exclude_targets: Iterable[str] = (),
    ) -> list[OutboxItem]:
        """Pending rows whose time has come, highest priority (fire) first."""
        return _outbox.due(
            self._core, now_ms=now_ms, limit=limit, exclude=exclude, channel=channel, exclude_targets=exclude_targets
        )

    def next_due_ms(self, *, exclude: Iterable[int] = (), channels: Iterable[str] | None = None) -> int | None:
        """When the next pending row (not in ``exclude``, in one of ``channels``) is due."""
        return _outbox.next_due_ms(self._core, exclude=exclude, channels=channels)

    def outbox(self, *, state: str | None = None, channel: str | None = None) -> list[OutboxRecord]:
        """Outbox rows (for tests, the API and operators reconciling ``unknown`` SMS)."""
        return _outbox.outbox(self._core, state=state, channel=channel)

    def mark_attempting(self, item_id: int, *, now_ms: int) -> None:
        _outbox.mark_attempting(self._core, item_id, now_ms=now_ms)

    def mark_done(
        self, item_id: int, *, state: str, now_ms: int, error: str | None = None, attempted: bool = False
    ) -> None:
        """``sent``, ``failed`` (permanent), ``unknown`` (SMS timed out), ``suppressed`` (budget), ``dead``."""
        _outbox.mark_done(self._core, item_id, state=state, now_ms=now_ms, error=error, attempted=attempted)

    def mark_retry(self, item_id: int, *, next_ms: int, error: str | None, count_attempt: bool = False) -> None:
        _outbox.mark_retry(self._core, item_id, next_ms=next_ms, error=error, count_attempt=count_attempt)

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record many delivery attempts in ONE transaction."""
        _outbox.record_outcomes(self._core, outcomes)

    def sms_count(self, *, phone: str | None, since_ms: int) -> int:
        """SMS that went (or may have gone) out since ``since_ms``: to one number, or to anyone."""
        return _outbox.sms_count(self._core, phone=phone, since_ms=since_ms)

    def oldest_sms_since(self, *, phone: str | None, since_ms: int) -> int | None:
        return _outbox.oldest_sms_since(self._core, phone=phone, since_ms=since_ms)

    def prune_outbox(self, *, before_ms: int) -> int:
        """Forget finished outbox rows older than ``before_ms`` (SMS rows are kept two days at least)."""
        return _outbox.prune_outbox(self._core, before_ms=before_ms)

    def reconcile_sms(self, item_id: int, *, delivered: bool, now_ms: int) -> None:
        """An operator checked an ``unknown`` SMS with the provider: mark it ``sent``, or queue it again."""
        _outbox.reconcile_sms(self._core, item_id, delivered=delivered, now_ms=now_ms)

    def disable_endpoint(self, target: str, *, reason: str, now_ms: int) -> None:
        _outbox.disable_endpoint(self._core, target, reason=reason, now_ms=now_ms)

    def enable_endpoint(self, target: str) -> None:
        _outbox.enable_endpoint(self._core, target)

    def disabled_endpoints(self) -> dict[str, str]:
        return _outbox.disabled_endpoints(self._core)
