"""The ``notify`` configuration section: roster, routes, escalation, webhooks, governance platform and SMS.

Owned by the alerts package; the gateway's config composes it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class NotifyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
