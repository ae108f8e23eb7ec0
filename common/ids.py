"""The one identifier type: building, device, grid and user ids, topic segments, path parameters.

An id is also an MQTT topic level, an InfluxDB tag value and part of a URL path, so it keeps to characters that need
no escaping in any of them, and to a length that keeps topics and log lines short.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Final

from pydantic import StringConstraints

ID_PATTERN: Final = r"[A-Za-z0-9_-]{1,64}"
"""The bare pattern, for messages and for callers that compile their own anchored regex (the telemetry decoder)."""

ID_REGEX: Final = rf"^{ID_PATTERN}$"
"""Anchored, as pydantic and JSON Schema take a pattern."""

Ident = Annotated[str, StringConstraints(pattern=ID_REGEX)]
"""A validated id in a pydantic model; its JSON schema carries :data:`ID_REGEX`."""

ID_SCHEMA: Final[Mapping[str, str]] = MappingProxyType({"type": "string", "pattern": ID_REGEX})
"""The JSON schema of an id, read-only: copy it (``dict(ID_SCHEMA)``) where a schema document takes ownership."""
