"""The inspection store and its deadline checks as the API and the mobile pages reach them: the gateway's own when it
gave them (``runtime.inspections``, ``runtime.deadlines``), else built here over ``runtime.store``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from alerts.inspections.config import InspectionPoint
from alerts.inspections.photos import PhotoRefused, check_filename, clean
from alerts.inspections.records import PhotoRecord
from alerts.inspections.store import InspectionStore
from gateway.api.framework import ApiError
from gateway.api.runtime import Runtime
from gateway.metrics import Metrics
from gateway.storage.inspections import InspectionDeadlines


@dataclass(frozen=True, slots=True)
class InspectionParts:
    store: InspectionStore
    deadlines: InspectionDeadlines
    clock_ms: Callable[[], int]
    metrics: Metrics | None = None

    def refused(self, reason: str) -> None:
        """Count a refused submission (``firegrid_inspection_refusals{reason}``)."""
        if self.metrics is not None:
            self.metrics.inspection_refusals.labels(reason).inc()

    def point(self, point_id: str) -> InspectionPoint | None:
        return next((p for p in self.deadlines.config.inspection_points if p.id == point_id), None)

    def grid_of(self, building: str) -> str | None:
        found = self.deadlines.config.building(building)
        return None if found is None else found.grid

    async def save_photo(self, data: bytes, *, filename: str | None, building: str | None) -> PhotoRecord:
        """Refuse (:class:`PhotoRefused`) or re-encode and store an uploaded photo, off the event loop."""
        config = self.deadlines.config.inspections
        check_filename(filename)
        photo = await asyncio.to_thread(
            clean, data, max_bytes=config.photo_max_kb * 1024, max_pixels=config.photo_max_pixels
        )
        return await asyncio.to_thread(self.store.save_photo, photo, building=building, now_ms=self.clock_ms())

    async def after_change(self) -> None:
        """An inspection or a hazard step may end an overdue alert: look at the deadlines now."""
        await self.deadlines.check(now_ms=self.clock_ms())


PARTS_KEY: web.AppKey[InspectionParts | None] = web.AppKey("firegrid_inspections", object)  # type: ignore[arg-type]


def install(app: web.Application, runtime: Runtime, *, clock_ms: Callable[[], int]) -> None:
    store: InspectionStore | None = runtime.inspections
    deadlines: InspectionDeadlines | None = runtime.deadlines
    if store is None and runtime.store is not None:
        store = InspectionStore(runtime.store, config=runtime.config.inspections)
    if store is not None and deadlines is None:
        deadlines = InspectionDeadlines(
            config=runtime.config,
            store=store,
            presence=runtime.presence,
            apply=runtime.apply_transitions,
            clock_ms=clock_ms,
        )
    metrics = runtime.metrics
    app[PARTS_KEY] = (
        None
        if store is None or deadlines is None
        else InspectionParts(store, deadlines, clock_ms, metrics if isinstance(metrics, Metrics) else None)
    )


def parts_of(app: web.Application) -> InspectionParts:
    parts = app.get(PARTS_KEY)
    if parts is None:
        raise ApiError(503, "the store is not available in this gateway", type="urn:firegrid:problem:unavailable")
    return parts


def refused(exc: PhotoRefused) -> ApiError:
    return ApiError(422, str(exc), type="urn:firegrid:problem:photo-refused")
