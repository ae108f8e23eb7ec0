"""The durable alert store (:class:`AlertStore`) and what it raises.  See :mod:`alerts.store.facade`."""

from __future__ import annotations

from alerts.records import AlertChange, Outcome
from alerts.store.errors import (
    AlertNotFound,
    AlertStoreError,
    IncidentNotFound,
    InvalidIncidentTransition,
    InvalidTransition,
)
from alerts.store.facade import AlertStore

__all__ = [
    "AlertChange",
    "AlertNotFound",
    "AlertStore",
    "AlertStoreError",
    "IncidentNotFound",
    "InvalidIncidentTransition",
    "InvalidTransition",
    "Outcome",
]
