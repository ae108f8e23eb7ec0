"""Alerts: the durable alert store, the closed-loop lifecycle, incidents, routing, escalation and delivery."""
