"""The demo's inspections: the QR page of the community's first inspection point for the banner, and a shop's
self-inspection with one failed item right after start, so the dashboard's 码上安全 panel has a hazard to show."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from gateway.config import FiregridConfig


def inspection_lines(config: FiregridConfig) -> list[str]:
    """The QR page of the community's first inspection point (what scanning its sticker opens on a phone)."""
    from alerts.inspections.links import point_url

    secret = config.inspections.secret_value()
    points = config.inspection_points
    if secret is None or not points:
        return []
    first = points[0]
    return [
        f"  inspection page:  {point_url(config.inspections.public_url, secret, first.id)} (QR of {first.id};"
        f" {len(points)} points, sheet: firegrid qr --config FILE --building {first.building} --out qr.pdf)",
    ]


async def first_inspection(service: Any, *, out: Callable[[str], None]) -> None:
    """A shop's monthly self-inspection with one failed item, as if its owner had just scanned the sticker: the
    dashboard's 码上安全 panel then has a hazard to show, and the receiver prints its signed events."""
    from alerts.inspections.records import CheckResult

    point = next((p for p in service.config.inspection_points if p.kind == "shop"), None)
    if point is None or service.config.inspections.secret_value() is None:
        return
    building = service.config.building(point.building)
    _, hazards = await asyncio.to_thread(
        service.inspections.record_inspection,
        point=point,
        grid=building.grid if building is not None else None,
        inspector="演示 店主",
        results=[CheckResult(item=item, ok=n != 1) for n, item in enumerate(point.items)],
        note="演示：自查发现的问题",
        photo=None,
        source="demo",
        now_ms=int(time.time() * 1000),
    )
    out(f"inspection: {point.id} self-inspected, {len(hazards)} hazard reported (dashboard: 码上安全)")
