"""The skeleton of a paged listing from the alert store: scope the filters by the token's buildings, fetch one row
more than a page off the event loop (so the page knows whether another follows), convert, and check the scope again.

Scope rule: a scoped token's view is filtered *before* anything is counted or paged, so totals, rollups and live
events never reveal a building outside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from gateway.api.framework import Call
from gateway.api.routes.state import check_scope, state_of


class _InBuilding(Protocol):
    @property
    def building(self) -> str: ...


_Row = TypeVar("_Row")
_Item = TypeVar("_Item", bound=_InBuilding)


@dataclass(frozen=True, slots=True)
class Scope:
    """The store's building and grid filters for one listing: the asked building, or for a scoped token every
    building it may see (in the asked grid); the grid filter stands beside an asked building, and alone for an
    unscoped token."""

    building: str | list[str] | None
    grid: str | None
    building_grids: dict[str, str]


def scope(call: Call, *, building: str | None, grid: str | None) -> Scope:
    """403 when the asked building or grid is outside the token's scope, else the filters that keep to it."""
    who = call.who
    check_scope(who, building=building, grid=grid)
    grids = state_of(call).building_grids
    if building is not None:
        return Scope(building, grid, grids)
    if who.scoped:
        return Scope([b for b in who.visible_buildings(grids) if grid is None or grids[b] == grid], None, grids)
    return Scope(None, grid, grids)


@dataclass(frozen=True, slots=True)
class Page(Generic[_Item]):
    items: list[_Item]
    next_offset: int | None


async def page(
    call: Call,
    *,
    limit: int,
    offset: int,
    fetch: Callable[[int, int], Sequence[_Row]],
    convert: Callable[[_Row], _Item],
) -> Page[_Item]:
    """``fetch(limit, offset)`` runs in a worker thread; ``convert`` turns each row into what the API shows."""
    rows = await asyncio.to_thread(fetch, limit + 1, offset)
    who = call.who
    # The store already filtered by scope; this second check means a store bug cannot leak another grid's row.
    items = [item for item in map(convert, rows) if who.sees_building(item.building)]
    return Page(items[:limit], offset + limit if len(rows) > limit else None)
