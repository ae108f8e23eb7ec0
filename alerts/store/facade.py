"""The alert store: alerts with their audit trail, incidents, and the notification outbox, in one SQLite file or
(cluster mode) one PostgreSQL database shared by several gateways.

Lifecycle: ``raised`` -> ``acknowledged`` -> ``dispatched`` -> ``resolved`` (with a cause).  Nothing is sent from
here: ``alerts.delivery.Notifier`` drains the outbox.

:class:`AlertStore` is the one door.  Its methods live with their part of the store, each a module over the shared
:class:`~alerts.store.core.Core` (the connection, its lock and the listeners): :mod:`~alerts.store.transitions` (what
the engine decided), :mod:`~alerts.store.commands` (what operators do to an alert), :mod:`~alerts.store.incidents`
(what they do to an incident: the closed loop), :mod:`~alerts.store.queries`, :mod:`~alerts.store.outbox` (the
notifier's side), :mod:`~alerts.store.reports` (a period's facts for the figures, the audit export);
:mod:`alerts.fanout` decides who hears of what.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from alerts.config import NotifyConfig
from alerts.dispatch import DispatchPlan
from alerts.records import AlertChange, OutboxItem
from alerts.store.commands import Commands
from alerts.store.core import Core
from alerts.store.incidents import IncidentCommands
from alerts.store.outbox import Outbox
from alerts.store.queries import Queries
from alerts.store.reports import Reports
from alerts.store.responders import Responders
from alerts.store.transitions import Transitions
from alerts.store.voice import Voice
from common.db import Cursor, is_postgres_url, open_database


class AlertStore(Transitions, Commands, IncidentCommands, Queries, Reports, Outbox, Voice, Responders):
    """See the module docstring.  Thread-safe (one connection behind a lock): the gateway may call ``apply`` from
    its commit thread while the notifier and the API use the event loop."""

    def __init__(
        self,
        target: str | Path,
        *,
        notify: NotifyConfig | None = None,
        building_names: Mapping[str, str] | None = None,
        plan: DispatchPlan | None = None,
        local_path: Path | None = None,
    ) -> None:
        """``target``: the SQLite file, or a ``postgresql://`` URL.  ``plan``: the micro fire stations and the
        buildings' locations incidents are dispatched by.  ``local_path``: for a PostgreSQL store, the local SQLite
        file's path (its directory keeps what stays on this machine, e.g. inspection photos); a file store is its
        own."""
        self.target: str | Path = target if is_postgres_url(target) else Path(target)
        self.path = self.target if isinstance(self.target, Path) else (local_path or Path("var/firegrid.sqlite"))
        self._core = Core(
            open_database(self.target, row_factory=sqlite3.Row),
            notify=notify or NotifyConfig(),
            building_names=dict(building_names or {}),
            plan=plan,
        )
        self._closed = False

    @classmethod
    def from_config(cls, config: Any) -> AlertStore:
        """From a ``FiregridConfig`` (duck-typed: the alerts package does not import the gateway)."""
        path = config.resolve_path(config.store.path)
        url = getattr(config.store, "url", None)
        names = {b.id: b.name for b in config.buildings}
        plan = config.dispatch_plan() if hasattr(config, "dispatch_plan") else None
        return cls(url or path, notify=config.notify, building_names=names, plan=plan, local_path=path)

    @property
    def core(self) -> Core:
        """The connection, lock and outbox writers, for a store that keeps its tables beside the alerts' and must
        commit its notifications in the same transactions (``alerts.inspections.store``)."""
        return self._core

    @property
    def postgres(self) -> bool:
        return self._core.dialect == "postgres"

    def set_fence(self, check: Callable[[Cursor], None] | None) -> None:
        """See :meth:`alerts.store.core.Core.set_fence`."""
        self._core.set_fence(check)

    @property
    def notify(self) -> NotifyConfig:
        return self._core.notify

    @property
    def plan(self) -> DispatchPlan:
        return self._core.plan

    @property
    def building_names(self) -> dict[str, str]:
        return self._core.building_names

    def close(self) -> None:
        with self._core.lock:
            if not self._closed:
                self._closed = True
                self._core.db.close()

    def add_listener(self, callback: Callable[[AlertChange], None]) -> None:
        """``callback(change)`` after each committed change, in the thread that made it.  Keep it quick."""
        self._core.listeners.append(callback)

    def remove_listener(self, callback: Callable[[AlertChange], None]) -> None:
        if callback in self._core.listeners:
            self._core.listeners.remove(callback)

    def add_outbox_listener(self, callback: Callable[[Sequence[OutboxItem]], None]) -> None:
        """``callback(items)`` with the pending outbox rows a transaction added (fire first), right after its
        ``COMMIT``, in the thread that committed; never for a transaction that rolled back.  Keep it quick.  Rows
        committed before the first listener came, or by another connection, are not handed over: read the outbox."""
        self._core.add_outbox_listener(callback)

    def remove_outbox_listener(self, callback: Callable[[Sequence[OutboxItem]], None]) -> None:
        self._core.remove_outbox_listener(callback)

    def publish(self, change: AlertChange) -> None:
        """Tell listeners about something that is not a stored change (e.g. an SMS budget warning)."""
        self._core.publish([change])
