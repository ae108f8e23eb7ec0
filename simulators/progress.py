"""A progress line for load runs: a redrawn bar on a terminal, a plain line every few seconds otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, *, total: int, stream: TextIO | None = None, plain_every_s: float = 5.0) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._every = 0.2 if self.tty else plain_every_s
        self._last = 0.0
        self._last_sent = 0
        self._last_t = time.monotonic()
        self.started = self._last_t

    def update(self, *, sent: int, errors: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self._every:
            return
        window = now - self._last_t
        rate = (sent - self._last_sent) / window if window > 0 else 0.0
        self._last, self._last_t, self._last_sent = now, now, sent
        elapsed = now - self.started
        if self.tty:
            width = 30
            done = int(width * sent / self.total) if self.total else width
            bar = "#" * done + "." * (width - done)
            self.stream.write(
                f"\r[{bar}] {sent:,}/{self.total:,} sent  {rate:,.0f} msg/s  errors {errors:,}  {elapsed:5.1f}s "
            )
        else:
            self.stream.write(
                f"progress: sent {sent:,}/{self.total:,}  rate {rate:,.0f} msg/s  errors {errors:,}  "
                f"elapsed {elapsed:.1f}s\n"
            )
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
