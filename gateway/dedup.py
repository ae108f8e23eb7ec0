"""Replay protection: a repeated ``(device, seq)`` inside the replay window is a ``duplicate``.

Kept in memory only, on purpose: after a crash the broker redelivers what was not acknowledged, and those copies
must be processed again (their first processing may not have been durable).  Points are idempotent in InfluxDB.
"""

from __future__ import annotations

from collections import OrderedDict


class Dedup:
    def __init__(self, *, window_ms: int, max_entries: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, int], int] = OrderedDict()

    def seen(self, device: str, seq: int, *, now_ms: int) -> bool:
        """True when ``(device, seq)`` was seen within the window; records it otherwise."""
        if self.window_ms <= 0:
            return False
        key = (device, seq)
        when = self._seen.get(key)
        if when is not None and now_ms - when <= self.window_ms:
            return True
        self._seen[key] = now_ms
        self._seen.move_to_end(key)
        self._expire(now_ms)
        return False

    def _expire(self, now_ms: int) -> None:
        seen = self._seen
        while seen:
            _key, when = next(iter(seen.items()))
            if now_ms - when <= self.window_ms and len(seen) <= self.max_entries:
                break
            seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)
