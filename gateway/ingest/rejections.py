"""Rejected messages: counted by reason, logged at most once per device per minute, the latest 1000 kept for
``GET /api/v1/rejections``."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass

from gateway.ingest.contract import Rejected
from gateway.metrics import Metrics

log = logging.getLogger("firegrid.rejections")

LOG_INTERVAL_MS = 60_000
MAX_TRACKED = 100_000  # senders remembered for log throttling


@dataclass(frozen=True, slots=True)
class Rejection:
    ts_ms: int
    reason: str
    detail: str
    topic: str
    building: str | None
    device: str | None


class Rejections:
    def __init__(self, *, metrics: Metrics, keep: int = 1000) -> None:
        self._metrics = metrics
        self._recent: deque[Rejection] = deque(maxlen=keep)
        # who -> when last logged, oldest first: evicting the head is O(1) (a flood of distinct topics or device ids
        # must not make each rejection rebuild this table; it is recorded on the event loop, ahead of alarms)
        self._last_logged: OrderedDict[str, int] = OrderedDict()
        self.counts: dict[str, int] = {}

    def record(self, exc: Rejected, *, topic: str, now_ms: int) -> Rejection:
        item = Rejection(
            ts_ms=now_ms,
            reason=exc.reason.value,
            detail=exc.detail,
            topic=topic[:300],
            building=exc.building,
            device=exc.device,
        )
        self._recent.append(item)
        self.counts[item.reason] = self.counts.get(item.reason, 0) + 1
        self._metrics.reject(item.reason)
        # One line per device per minute: a detector flooding garbage must not flood the log too.
        who = exc.device or topic[:100]
        last = self._last_logged.get(who)
        if last is None or now_ms - last >= LOG_INTERVAL_MS:
            self._last_logged[who] = now_ms
            self._last_logged.move_to_end(who)
            while len(self._last_logged) > MAX_TRACKED:
                self._last_logged.popitem(last=False)
            log.warning(
                "rejected message from %s: %s: %s",
                who,
                item.reason,
                item.detail,
                extra={"reason": item.reason, "topic": item.topic, "device": exc.device},
            )
        return item

    def recent(self, limit: int = 100) -> list[Rejection]:
        """Newest first."""
        items = list(self._recent)[-limit:] if limit > 0 else []
        return items[::-1]
