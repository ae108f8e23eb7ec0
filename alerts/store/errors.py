"""The store's exceptions: one type per failure a caller handles differently."""

from __future__ import annotations


class AlertStoreError(Exception):
    """Base class of the store's errors."""


class AlertNotFound(AlertStoreError):
    def __init__(self, alert_id: int) -> None:
        super().__init__(f"no alert {alert_id}")
        self.alert_id = alert_id


class InvalidTransition(AlertStoreError):
    """The requested lifecycle step is not allowed from the alert's current state (e.g. acknowledging a resolved
    alert)."""

    def __init__(self, alert_id: int, state: str, action: str) -> None:
        super().__init__(f"alert {alert_id} is {state}: cannot {action}")
        self.alert_id = alert_id
        self.state = state
        self.action = action


class IncidentNotFound(AlertStoreError):
    def __init__(self, incident_id: int) -> None:
        super().__init__(f"no incident {incident_id}")
        self.incident_id = incident_id


class InvalidIncidentTransition(InvalidTransition):
    """The requested step is not allowed from the incident's current state (e.g. arriving at a resolved one)."""

    def __init__(self, incident_id: int, state: str, action: str) -> None:
        AlertStoreError.__init__(self, f"incident {incident_id} is {state}: cannot {action}")
        self.alert_id = incident_id
        self.incident_id = incident_id
        self.state = state
        self.action = action
