"""A validated rule set: what the engine is built from (``rules.loader.load_rule_set`` makes one from a config)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from rules.model import RuleConfig
from rules.types import MaintenanceWindow

DEFAULT_HEARTBEAT_S = 300


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Rules plus the facts they need from elsewhere in the config (heartbeat periods, configured windows).

    ``heartbeat_s_by_kind`` comes from ``presence.heartbeat_s``, ``heartbeat_s_by_device`` from each device's
    ``heartbeat_s``; the absence rule's silent period is a multiple of the device's heartbeat.
    """

    rules: tuple[RuleConfig, ...]
    heartbeat_s_by_kind: Mapping[str, int] = field(default_factory=dict)
    heartbeat_s_by_device: Mapping[str, int] = field(default_factory=dict)
    maintenance: tuple[MaintenanceWindow, ...] = ()
    source: str = "inline"

    def heartbeat_s(self, device: str, kind: str) -> int:
        hb = self.heartbeat_s_by_device.get(device)
        if hb is not None:
            return hb
        return self.heartbeat_s_by_kind.get(kind, DEFAULT_HEARTBEAT_S)

    def rule(self, rule_id: str) -> RuleConfig | None:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None
