"""Replay protection: the same sample — same device, same ``seq``, same values — repeated inside the replay window
is a ``duplicate``.

The values are part of the key because a detector that rebooted starts its counter again: its first alarm after a
power cut reuses a ``seq`` it sent minutes ago, and dropping that as a replay would lose a fire alarm.  A true copy
(a device's retransmission, a replayed message) carries the same values.  The timestamp is not part of the key: a
device that sends no ``ts`` is stamped with the time of receipt, which differs between copies.

Kept in memory only, on purpose: after a crash the broker redelivers what was not acknowledged, and those copies
must be processed again (their first processing may not have been durable).  Points are idempotent in InfluxDB.

Each sample is remembered as one 64-bit SipHash of its text (``repr`` of device, seq and values), about 180 bytes
per entry with the ordered dict, against about 470 bytes for the tuple of the values themselves: the window is full
at rate x ``replay_window_s`` entries (300,000 at 500 readings/s), so the key's size is the gateway's memory.  The
text, not the tuple, is hashed because CPython's numeric hash is structural (``hash(-1.0) == hash(-2.0)``): a heat
detector whose counter restarted, now reading -2 °C where it once read -1 °C under the same ``seq``, would be taken
for a replay.  SipHash with the interpreter's random key makes two different samples collide with probability
2**-64.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from rules.types import MetricValue


class Dedup:
    def __init__(self, *, window_ms: int, max_entries: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._seen: OrderedDict[int, int] = OrderedDict()

    def seen(self, device: str, seq: int, values: Mapping[str, MetricValue], *, now_ms: int) -> bool:
        """True when this device sent this ``seq`` with these values within the window; records it otherwise."""
        if self.window_ms <= 0:
            return False
        key = hash(f"{device}\x1f{seq}\x1f{tuple(values.items())!r}")
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
