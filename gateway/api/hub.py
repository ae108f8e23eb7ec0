"""The live event hub behind ``GET /api/v1/stream`` (Server-Sent Events).

Publishers (the alert store's listener, the presence tracker) call :meth:`Hub.publish`; every SSE client holds a
:class:`Subscription`.  Design points:

* **Bounded memory.**  Each subscriber has a bounded queue.  A client too slow to keep up is not allowed to grow it:
  when its queue is full the subscription is ended with :class:`SubscriberLagged`, the HTTP response closes, and the
  client reconnects with ``Last-Event-ID`` and resumes from the hub's bounded replay ring (or is told to ``reset`` and
  reload when it fell further behind than the ring reaches).  Dropping single events silently would show a
  dashboard a fire that never clears, so we drop the *connection*, never an event inside a connection.
* **Thread-safe publish.**  The alert store may call its listeners from a worker thread (SQLite runs off the event
  loop); ``publish`` then hands the event to the loop with ``call_soon_threadsafe``.
* **Resumable.**  Event ids are a monotonic counter; the last ``history`` events are kept for ``Last-Event-ID``,
  each with a right-sized copy of its JSON: orjson 3.12+ returns its working buffer unshrunk (16 KiB for a
  650-byte alert event), which made a full ring about 35 MB instead of about 4 MB (the memory the soak saw growing).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Event", "Hub", "ResumeGap", "SubscriberLagged", "Subscription"]


class SubscriberLagged(Exception):
    """The subscriber's queue overflowed; it must reconnect (and resume with ``Last-Event-ID``)."""


class ResumeGap(Exception):
    """``Last-Event-ID`` is older than the replay ring: events were missed and the client must reload its state."""


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    type: str
    data: Mapping[str, Any]
    payload: bytes  # the JSON encoding of ``data``, computed once for all subscribers

    def encode_sse(self) -> bytes:
        # orjson never emits raw newlines, so the whole document fits on one ``data:`` line.
        return b"id: %d\nevent: %s\ndata: %s\n\n" % (self.id, self.type.encode(), self.payload)


_CLOSED = object()
_LAGGED = object()


class Subscription:
    """One subscriber.  Use as ``async with hub.subscribe() as sub: async for event in sub: ...``."""

    def __init__(
        self,
        hub: Hub,
        *,
        maxsize: int,
        accept: Callable[[Event], bool] | None,
    ) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=maxsize + 1)  # +1 slot for the lag marker
        self._maxsize = maxsize
        self._accept = accept
        self.closed = False
        self.lagged = False
        # Highest event id handed to this subscriber: a delivery still queued on the loop for an event the
        # subscriber already got by replay (or that predates it) is not given twice.
        self.floor = 0

    # Called on the loop thread only.
    def _offer(self, event: Event) -> None:
        if self.closed or self.lagged or event.id <= self.floor:
            return
        self.floor = event.id
        if self._accept is not None and not self._accept(event):
            return
        if self._queue.qsize() >= self._maxsize:
            self.lagged = True
            self._queue.put_nowait(_LAGGED)
            return
        self._queue.put_nowait(event)

    async def get(self, within: float | None = None) -> Event | None:
        """The next event, or None when ``within`` seconds pass first (time for a heartbeat)."""
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        try:
            if within is None:
                item = await self._queue.get()
            else:
                item = await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            return None
        if item is _LAGGED:
            raise SubscriberLagged(f"subscriber fell more than {self._maxsize} events behind")
        if item is _CLOSED:
            raise StopAsyncIteration
        assert isinstance(item, Event)
        return item

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while True:
            event = await self.get()
            if event is not None:
                return event

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub._remove(self)
            try:
                self._queue.put_nowait(_CLOSED)
            except asyncio.QueueFull:
                pass

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Hub:
    """Fan-out of live events to SSE subscribers; see the module docstring."""

    def __init__(self, *, queue_size: int = 1000, history: int = 2000, heartbeat_s: float = 15.0) -> None:
        self.queue_size = queue_size
        self.heartbeat_s = heartbeat_s
        self._lock = threading.Lock()
        self._next_id = 1
        self._history: collections.deque[Event] = collections.deque(maxlen=history)
        self._subscribers: set[Subscription] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.published = 0
        self.lagged = 0

    @property
    def last_id(self) -> int:
        return self._next_id - 1

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop subscribers live on (set automatically by the first ``subscribe``)."""
        self._loop = loop

    def publish(self, event_type: str, data: Mapping[str, Any]) -> Event:
        """Record an event and deliver it to every subscriber.  Safe to call from any thread."""
        # A right-sized copy: orjson 3.12+ returns its working buffer unshrunk (see the module docstring).
        payload = bytes(memoryview(orjson.dumps(data, default=_json_default, option=orjson.OPT_NON_STR_KEYS)))
        with self._lock:
            event = Event(id=self._next_id, type=_clean_type(event_type), data=data, payload=payload)
            self._next_id += 1
            self._history.append(event)
            self.published += 1
            loop = self._loop
            if loop is not None and not loop.is_closed():
                # Scheduled under the lock, so the loop delivers events in id order even when several threads
                # publish at once (a client resuming with Last-Event-ID relies on ids only growing).
                try:
                    loop.call_soon_threadsafe(self._deliver, event)
                except RuntimeError:  # the loop closed between the check and the call
                    pass
        return event

    def _deliver(self, event: Event) -> None:
        for sub in list(self._subscribers):
            was_lagged = sub.lagged
            sub._offer(event)
            if sub.lagged and not was_lagged:
                self.lagged += 1

    def subscribe(
        self, *, last_event_id: int | None = None, accept: Callable[[Event], bool] | None = None
    ) -> Subscription:
        """A new subscription; with ``last_event_id`` the events after it are replayed first.

        Raises :class:`ResumeGap` when the ring no longer holds the event after ``last_event_id``.
        """
        self._loop = asyncio.get_running_loop()
        sub = Subscription(self, maxsize=self.queue_size, accept=accept)
        with self._lock:
            if last_event_id is not None and last_event_id < self.last_id:
                oldest = self._history[0].id if self._history else self._next_id
                if last_event_id + 1 < oldest:
                    raise ResumeGap(f"events {last_event_id + 1}..{oldest - 1} are no longer kept")
                if self.last_id - last_event_id > self.queue_size:
                    raise ResumeGap(f"{self.last_id - last_event_id} events missed: more than one queue holds")
                for event in self._history:
                    if event.id > last_event_id:
                        sub._offer(event)
            sub.floor = self.last_id
            self._subscribers.add(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    def close(self) -> None:
        """End every subscription (on shutdown), so SSE responses finish instead of hanging."""
        for sub in list(self._subscribers):
            sub.close()


def _clean_type(event_type: str) -> str:
    # An event name may not contain line breaks (they would split the SSE frame).
    return "".join(ch for ch in event_type if ch not in "\r\n:") or "message"


def _json_default(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "label"):  # Severity
        return value.label
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
