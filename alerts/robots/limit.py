"""Each robot's rate limit as a sliding minute, kept by the notifier: a message waits for the window to open, it is
never dropped.  Pure: times come in as arguments."""

from __future__ import annotations

from collections import deque


class RobotLimiter:
    def __init__(self, *, window_ms: int = 60_000) -> None:
        self.window_ms = window_ms
        self._sent: dict[str, deque[int]] = {}

    def _trim(self, target: str, now_ms: int) -> deque[int]:
        sent = self._sent.setdefault(target, deque())
        while sent and sent[0] <= now_ms - self.window_ms:
            sent.popleft()
        return sent

    def free_at(self, target: str, *, limit: int, now_ms: int) -> int:
        """When ``target`` may take its next message: ``now_ms`` if it may now."""
        sent = self._trim(target, now_ms)
        if len(sent) < limit:
            return now_ms
        return sent[len(sent) - limit] + self.window_ms

    def record(self, target: str, *, now_ms: int) -> None:
        self._trim(target, now_ms).append(now_ms)
