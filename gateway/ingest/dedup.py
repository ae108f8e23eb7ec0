"""Replay protection: the same sample — same device, same ``seq``, same values — repeated inside the replay window
is a ``duplicate``.

The values are part of the key because a detector that rebooted starts its counter again: its first alarm after a
power cut reuses a ``seq`` it sent minutes ago, and dropping that as a replay would lose a fire alarm.  A true copy
(a device's retransmission, a replayed message) carries the same values.  The timestamp is not part of the key: a
device that sends no ``ts`` is stamped with the time of receipt, which differs between copies.

Kept in memory only, on purpose: after a crash the broker redelivers what was not acknowledged, and those copies
must be processed again (their first processing may not have been durable).  Points are idempotent in InfluxDB.

Each sample is remembered as one 64-bit SipHash of its text (``repr`` of device, seq and values), the key of a plain
dict (smaller than a set: a dict's table is 24 bytes per entry plus an index, a set's 16 bytes per slot with up to
4x as many slots as entries), one dict per quarter of the window (a generation): 60-90 bytes per entry.  The window
is full at rate x ``replay_window_s`` entries (300,000 at 500 readings/s), so the entry's size is the gateway's
memory (an ordered dict of hash -> time, 175 bytes per entry, grew the latency bench's gateway by 26 MiB).  A
generation is dropped as a whole once its newest entry is older than the window: a sample is remembered for the
whole window and at most a quarter of it longer.  The text, not the tuple, is hashed because CPython's numeric hash
is structural (``hash(-1.0) == hash(-2.0)``): a heat detector whose counter restarted, now reading -2 °C where it
once read -1 °C under the same ``seq``, would be taken for a replay.  SipHash with the interpreter's random key makes
two different samples collide with probability 2**-64.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from rules.types import MetricValue

GENERATIONS = 4  # per window: a sample is remembered for the window and at most 1/GENERATIONS of it longer


class Dedup:
    def __init__(self, *, window_ms: int, max_entries: int = 1_000_000) -> None:
        self.window_ms = window_ms
        self.max_entries = max_entries
        self._span = max(1, window_ms // GENERATIONS)
        # (first ms, hashes) per generation, oldest first; the last one takes the new samples
        self._generations: deque[tuple[int, dict[int, None]]] = deque()
        self._count = 0
        # a generation also ends when it is this full, so that the memory bound drops a part of the window, not all
        self._generation_max = max(1, max_entries // (GENERATIONS + 1))

    def seen(self, device: str, seq: int, values: Mapping[str, MetricValue], *, now_ms: int) -> bool:
        """True when this device sent this ``seq`` with these values within the window; records it otherwise."""
        if self.window_ms <= 0:
            return False
        key = hash(f"{device}\x1f{seq}\x1f{tuple(values.items())!r}")
        generations = self._generations
        if generations and now_ms - generations[0][0] - self._span > self.window_ms:
            self._expire(now_ms)
        for _start, hashes in generations:
            if key in hashes:
                return True
        if (
            not generations
            or now_ms - generations[-1][0] >= self._span
            or len(generations[-1][1]) >= self._generation_max
        ):
            generations.append((now_ms, {}))
        generations[-1][1][key] = None
        self._count += 1
        if self._count > self.max_entries:
            self._count -= len(generations.popleft()[1])
        return False

    def _expire(self, now_ms: int) -> None:
        # Every entry of a generation is younger than its start plus ``_span`` (a new one starts then, or sooner when
        # it is full): once that is older than the window, none of them is needed.
        generations = self._generations
        while generations and now_ms - generations[0][0] - self._span > self.window_ms:
            self._count -= len(generations.popleft()[1])

    def clear(self) -> None:
        """Forget every sample.  Cluster mode, when a partition changes hands: copies of messages this gateway took
        in but never committed (their partition was lost or handed over meanwhile) come back to it later, and must
        be processed then, not dropped as replays."""
        self._generations.clear()
        self._count = 0

    def __len__(self) -> int:
        return self._count
