"""The ``/api/v1`` operations, one module per resource.  Each is declared with
:func:`gateway.api.framework.operation`, which is also what ``/openapi.json`` reads: importing this package registers
them, in the order the OpenAPI document lists them.

Scope rule applied everywhere: a scoped token's view is filtered *before* anything is counted or paged, so totals,
rollups and live events never reveal a building outside it.
"""

from __future__ import annotations

# The import order is the order of the OpenAPI document's paths.
# isort: off
from gateway.api.routes import alerts, incidents, stations, devices, buildings, rejections, maintenance, stream

# isort: on
from gateway.api.routes.state import STATE_KEY, ApiState, DeviceIndex

__all__ = [
    "STATE_KEY",
    "ApiState",
    "DeviceIndex",
    "alerts",
    "buildings",
    "devices",
    "incidents",
    "maintenance",
    "rejections",
    "stations",
    "stream",
]
