"""Time for simulations.  All generation is driven by a virtual clock (epoch milliseconds) so that the same seed and
start time produce the same messages whether they are published in real time, faster, or written to a file.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, None: 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


class DurationError(ValueError):
    pass


def parse_duration_ms(text: str | int | float) -> int:
    """``500ms``, ``30s``, ``30`` (seconds), ``2m``, ``1.5h``, ``1d`` -> milliseconds."""
    if isinstance(text, int | float):
        return int(text * 1000)
    match = _DURATION_RE.match(text)
    if not match:
        raise DurationError(f"bad duration {text!r}: expected e.g. 500ms, 30s, 2m, 1h")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def format_ms(ms: int) -> str:
    if ms % 3_600_000 == 0 and ms:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0 and ms:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class PacedClock:
    """Maps wall time onto virtual time: ``virtual = start_ms + (monotonic - m0) * speed``.

    The simulation asks it what virtual time it is *now* to know which messages are due; the messages themselves
    carry only virtual times, so pacing never changes their content.
    """

    start_ms: int
    speed: float = 1.0

    def __post_init__(self) -> None:
        self._m0 = time.monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((time.monotonic() - self._m0) * 1000 * self.speed)

    def wall_delay_s(self, virtual_ms: int) -> float:
        """Seconds of wall time until the virtual clock reaches ``virtual_ms`` (0 if already there)."""
        return max(0.0, (virtual_ms - self.now_ms()) / 1000 / self.speed)
