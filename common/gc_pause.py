"""Pausing Python's cyclic garbage collector around work that builds many objects and no cycles.

Building a district's objects (start-up: config, registry, presence; a request listing every device) triggers a
full collection every few hundred thousand allocations, each one walking the whole heap: for 100,000 devices those
collections cost about a third of the work itself (measured; docs/performance.md).  Never hold a pause across an
``await``: other tasks may create cycles meanwhile.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
