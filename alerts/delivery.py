"""The notifier: drains the durable outbox (fire first), runs escalation timers, and records every outcome.

A pipeline of small stages per outbox row: pick (priority order) -> guard (age, endpoint, SMS budget and rate) ->
send (one module per integration, which says whether a failure is retryable) -> record.

Delivery guarantees:
* webhooks and the governance platform: at least once, with the same ``webhook-id`` on every attempt; a row is
  marked ``sent`` only after the receiver answered 2xx, so a crash before that resends it (same id), a crash after
  that never does.
* SMS: at most once.  The row is committed as ``attempting`` *before* the request; a timeout, a dropped connection
  or a crash mid-request turns it into ``unknown`` (reconciled by an operator against the provider's records), never
  into a blind resend.

New rows reach the notifier two ways: the store hands it the rows a transaction added right after that transaction
committed (:meth:`AlertStore.add_outbox_listener`), and it starts them at once when a worker is free and nothing of
their channel or endpoint is waiting (so fire first holds); everything else, and everything after a restart, it
finds in its rounds over the database, which stays the record.  A row heard of both ways is sent once: a round
skips the rows in flight, those whose outcome is not recorded yet, and those started while the round ran.

Time comes from an injectable ``clock`` (epoch ms) so tests drive escalation without sleeping for a minute; after
moving a fake clock, call ``wake()``.

Every store call runs on the notifier's own database thread, never on the event loop: the gateway's commit thread
may hold the store for a whole group commit (a 200-detector storm).  The notifier runs on whatever loop calls
:meth:`Notifier.run`; ``firegrid run`` gives it a thread and loop of its own (``NotifierThread`` in the service), so
that a telemetry burst's socket and batch slices on the ingest loop do not delay a webhook's start, POST and answer.
Its entry points from other threads (``wake``, ``stop``, the store's listeners) hand over with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import threading
import time
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import aiohttp
import orjson

from alerts import governance, webhook
from alerts.config import NotifyConfig, WebhookConfig
from alerts.records import OutboxItem
from alerts.robots import sender_for as robot_sender
from alerts.robots.limit import RobotLimiter
from alerts.robots.render import IncidentUpdate, render
from alerts.sms import SmsMessage, sender_for
from alerts.store import AlertChange, AlertStore, Outcome
from alerts.voice import VoiceCall
from alerts.voice import sender_for as voice_sender
from alerts.webhook import SendResult

log = logging.getLogger("firegrid.alerts.delivery")


T = TypeVar("T")

# With the hand-off on, the round a store change calls for (new escalation times, rows a hand-off could not start) comes
# this much later: the sends the hand-off has just started go out first, not sharing the interpreter with the round's
# queries.  A row the hand-off could not start wakes a round at once.
ROUND_AFTER_CHANGE_S = 0.01


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class Notifier:
    def __init__(
        self,
        store: AlertStore,
        notify: NotifyConfig | None = None,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        session: aiohttp.ClientSession | None = None,
        workers: int | None = None,
        rng: random.Random | None = None,
        drain_s: float = 3.0,
        poll_s: float = 5.0,
        scope: Callable[[], Collection[str] | None] | None = None,
    ) -> None:
        """``poll_s``: the longest sleep between rounds over the database when nothing is due sooner (a fake clock
        may have moved; rows written by another connection are found).  ``scope``: the buildings whose outbox and
        escalations this notifier drains, asked at every round (cluster mode: those of the partitions this gateway
        holds a lease on, so a building's notifications have one sender); None: every building."""
        self.store = store
        self._scope: Callable[[], Collection[str] | None] = scope or (lambda: None)
        self.notify = notify or store.notify
        self.clock = clock
        self.workers = workers or self.notify.workers
        self.rng = rng or random.Random()
        self.drain_s = drain_s  # on stop(): how long requests in flight may take to finish
        self.poll_s = poll_s
        self.stats: dict[str, int] = {}
        self._session = session
        self._own_session = session is None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._db: ThreadPoolExecutor | None = None
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._busy: dict[str, int] = {"webhook": 0, "governance": 0, "sms": 0, "robot": 0, "voice": 0}
        # Group robots: one message at a time per robot (so a robot sees its messages in priority order, fire
        # first) and at most its platform's rate per sliding minute (kept here: a message waits, never drops).
        self.robots = {r.target: r for r in self.notify.robots}
        self.limiter = RobotLimiter()
        # Webhook endpoints share the channel's workers; one endpoint may hold at most half of them, so a receiver
        # that hangs until its timeout cannot keep the other endpoints' fire pages waiting behind its retries.
        self.per_endpoint = max(1, self.workers // 2)
        self._endpoint_busy: dict[str, int] = {}
        # Webhook outcomes waiting to be recorded: all those that finished while the previous round ran share one
        # commit (a commit per delivery would cap throughput at the disk's fsync rate).  Their rows stay excluded
        # from picking until recorded.
        self._outcomes: list[Outcome] = []
        self._unflushed: set[int] = set()
        self._stopping = False
        # The hand-off (see the module docstring).  ``_ready``: the restart's recovery is done.  ``_planning``: a
        # round is reading the database; the rows started meanwhile (``_started_in_round``) may come back in its
        # answer and are skipped.  ``_waiting``: channels and endpoints whose due rows may be waiting in the
        # database for a worker; a row handed over for them waits for the round too, so that it never overtakes an
        # older (or more urgent) one.
        self._ready = False
        self._round_timer: asyncio.TimerHandle | None = None
        self._planning = False
        self._started_in_round: set[int] = set()
        self._waiting: set[str] = set()
        self._waiting_in_round: set[str] = set()
        self._next_prune_ms = 0
        self._loop_thread: int | None = None
        self._sms_send = sender_for(self.notify.sms.provider) if self.notify.sms else None
        self.store.add_listener(self._on_change)

    # ------------------------------------------------------------------ control
    def _on_change(self, change: AlertChange) -> None:
        if not self._ready:
            self.wake()
            return
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._round_soon()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._round_soon)

    def _round_soon(self) -> None:
        """A round in :data:`ROUND_AFTER_CHANGE_S` (loop thread); one for all the changes until then."""
        if self._round_timer is None and self._loop is not None:
            self._round_timer = self._loop.call_later(ROUND_AFTER_CHANGE_S, self._round_now)

    def _round_now(self) -> None:
        self._round_timer = None
        if self._wake is not None:
            self._wake.set()

    def _on_committed(self, items: Sequence[OutboxItem]) -> None:
        """Outbox rows a transaction has just committed, in the thread that committed them."""
        loop = self._loop
        if loop is None or not self._ready:
            return  # not running, or still recovering: the first round reads them from the database
        if threading.get_ident() == self._loop_thread:
            self._take(items)
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the next run reads them
                loop.call_soon_threadsafe(self._take, items)

    def _take(self, items: Sequence[OutboxItem]) -> None:
        """Start the handed-over rows that may go now (loop thread); leave the others to a round."""
        if self._stopping or not self._ready:
            return
        now = self.clock()
        ready = [
            i for i in items if i.next_ms <= now and i.channel not in self._waiting and i.target not in self._waiting
        ]
        ready.sort(key=lambda i: (-i.priority, i.id))  # fire first
        started = self._start(ready)
        if started:
            self._count("started_on_commit", len(started))
            if self._planning:
                self._started_in_round.update(started)
        if len(started) < len(items):
            # Not startable now (no free worker, an endpoint at its share, not due yet): from here on, rows of
            # its channel wait for a round (priority order), and a round is due to pick it.
            for item in items:
                if item.id not in started:
                    for key in (item.channel, item.target):
                        self._waiting.add(key)
                        self._waiting_in_round.add(key)
            self.wake()

    def wake(self) -> None:
        """New outbox rows or a moved clock: look again now.  Safe to call from any thread."""
        loop, event = self._loop, self._wake
        if loop is None or event is None:
            return
        if threading.get_ident() == self._loop_thread:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(event.set)

    def stop(self) -> None:
        self._stopping = True
        self.wake()

    @property
    def ready(self) -> bool:
        """Running, the restart's recovery done: committed outbox rows are handed over from now on."""
        return self._ready

    @property
    def idle(self) -> bool:
        return not self._inflight and not self._outcomes and not self._unflushed

    def _count(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    async def _io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the notifier's database thread."""
        assert self._loop is not None and self._db is not None
        return await self._loop.run_in_executor(self._db, functools.partial(fn, *args, **kwargs))

    # ------------------------------------------------------------------ main loop
    def set_scope(self, scope: Callable[[], Collection[str] | None]) -> None:
        """See ``scope`` in the constructor (cluster mode sets it once the leases are wired)."""
        self._scope = scope

    async def run(self) -> None:
        """Until ``stop()`` (or cancellation): resume the outbox left by a previous run, then deliver and escalate."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="notifier-db")
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        try:
            await self._io(self.store.add_outbox_listener, self._on_committed)
            recovered = await self._io(self.store.recover, now_ms=self.clock(), buildings=self._scope())
            if recovered:
                log.warning("%d SMS were interrupted mid-request: marked unknown (not resent)", recovered)
            self._ready = True
            while not self._stopping:
                self._wake.clear()
                outcomes, self._outcomes = self._outcomes, []
                free = {channel: self.workers - n for channel, n in self._busy.items()}
                skip = self._inflight.keys() | self._unflushed
                endpoints = dict(self._endpoint_busy)
                held = self._robots_held()
                self._planning = True
                self._waiting_in_round.clear()
                try:
                    items, timeout = await self._io(self._plan, outcomes, free, skip, endpoints, held)
                except Exception:  # e.g. the disk is full: keep trying, delivery must not die with one error
                    self._outcomes = outcomes + self._outcomes  # keep them (and their rows excluded)
                    log.exception("notifier round failed; retrying in 1 s")
                    timeout = 1.0
                    self._waiting.update(free)  # unknown: hand-offs wait for a round that works
                else:
                    self._unflushed.difference_update(o.id for o in outcomes)
                    fresh = [i for i in items if i.id not in self._started_in_round]
                    # A row a hand-off's start left no worker for stays pending: that start's end wakes a round.
                    self._start(fresh)
                    self._waiting = self._still_waiting(free, items, held) | self._waiting_in_round
                finally:
                    self._planning = False
                    self._started_in_round.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            self._ready = False
            if self._round_timer is not None:
                self._round_timer.cancel()
                self._round_timer = None
            self.store.remove_outbox_listener(self._on_committed)
            tasks = list(self._inflight.values())
            if self._stopping and tasks:
                # A graceful stop lets requests in flight finish (an SMS cut off mid-request would become
                # "unknown"); a cancellation (or a slow receiver) cuts them off.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait(tasks, timeout=self.drain_s)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._outcomes:
                with contextlib.suppress(Exception):
                    self.store.record_outcomes(self._outcomes)
                    self._outcomes = []
            self._db.shutdown(wait=True)
            self._db = None
            if self._own_session and self._session is not None:
                await self._session.close()
                self._session = None
            self._loop = None
            self._wake = None

    def _still_waiting(self, free: dict[str, int], picked: list[OutboxItem], held: dict[str, int]) -> set[str]:
        """After a round: the channels whose due rows may not all have found a worker (none was free, or the round
        took as many as were free), the endpoints at their share and the robots held: a row handed over for one of
        them waits for the next round."""
        taken: dict[str, int] = {}
        for item in picked:
            taken[item.channel] = taken.get(item.channel, 0) + 1
        waiting = {channel for channel, n in free.items() if n <= 0 or taken.get(channel, 0) >= n}
        waiting.update(url for url, n in self._endpoint_busy.items() if n >= self.per_endpoint)
        waiting.update(held)
        return waiting

    def _robots_held(self) -> dict[str, int]:
        """Robots that may not take a message now (one in flight, or at their rate limit), and from when they may:
        read on the loop thread, where the limiter and the in-flight counts live."""
        now = self.clock()
        held: dict[str, int] = {}
        for target, robot in self.robots.items():
            if self._endpoint_busy.get(target, 0) >= 1:
                held[target] = now + 5000  # its worker wakes us when done
                continue
            free_at = self.limiter.free_at(target, limit=robot.limit_per_min, now_ms=now)
            if free_at > now:
                held[target] = free_at
        return held

    def _plan(
        self,
        outcomes: list[Outcome],
        free: dict[str, int],
        skip: set[int],
        endpoints: dict[str, int] | None = None,
        held: dict[str, int] | None = None,
    ) -> tuple[list[OutboxItem], float]:
        """One round on the database thread: record outcomes, escalate, prune, pick what is due.  Returns the rows
        to start and how long to sleep at most.  ``endpoints``: webhook requests in flight per endpoint; ``held``:
        robots that may not take a message now, and from when they may."""
        if outcomes:
            self.store.record_outcomes(outcomes)
            skip = skip - {o.id for o in outcomes}  # recorded now: a retry due at once may go in this round
        now = self.clock()
        scope = self._scope()
        nxt_esc = self.store.next_escalation_ms(buildings=scope)
        if nxt_esc is not None and nxt_esc <= now:
            self._count("escalated", len(self.store.escalate_due(now_ms=now, buildings=scope)))
            nxt_esc = self.store.next_escalation_ms(buildings=scope)
        if now >= self._next_prune_ms:
            self._next_prune_ms = now + 3_600_000
            pruned = self.store.prune_outbox(before_ms=now - self.notify.retry.keep_done_s * 1000)
            if pruned:
                log.info("pruned %d finished outbox rows", pruned)
        # Per channel, so that a flood of webhooks never holds back an SMS (and vice versa); within a channel in
        # priority order: fire first, news first.
        items: list[OutboxItem] = []
        still_free: list[str] = []
        for channel, n in free.items():
            if n <= 0:
                picked: list[OutboxItem] = []
            elif channel == "webhook":
                picked = self._pick_webhooks(now, n, skip, dict(endpoints or {}), scope)
            elif channel == "robot":
                picked = self._pick_robots(now, n, skip, held or {}, scope)
            else:
                picked = self.store.due(now_ms=now, limit=n, exclude=skip, channel=channel, buildings=scope)
            items.extend(picked)
            if n - len(picked) > 0:
                still_free.append(channel)
        # Sleep until the next row a free worker could take, or the next escalation; a busy channel's workers wake
        # us when they finish (no busy-waiting on rows that are already in flight).
        nxt_due = self.store.next_due_ms(exclude=skip | {i.id for i in items}, channels=still_free, buildings=scope)
        waits = [t for t in (nxt_due, nxt_esc) if t is not None]
        timeout = self.poll_s  # also re-check now and then (a fake clock may have moved)
        waits.extend(t for t in (held or {}).values())
        if waits:
            timeout = min(timeout, max(0.0, (min(waits) - self.clock()) / 1000))
        return items, timeout

    def _pick_webhooks(
        self, now: int, n: int, skip: set[int], busy: dict[str, int], scope: Collection[str] | None
    ) -> list[OutboxItem]:
        """Up to ``n`` due webhook rows in priority order, at most ``per_endpoint`` in flight per endpoint."""
        picked: list[OutboxItem] = []
        taken = set(skip)
        while len(picked) < n:
            full = [url for url, k in busy.items() if k >= self.per_endpoint]
            rows = self.store.due(
                now_ms=now,
                limit=n - len(picked),
                exclude=taken,
                channel="webhook",
                exclude_targets=full,
                buildings=scope,
            )
            if not rows:
                break
            for row in rows:
                taken.add(row.id)
                if busy.get(row.target, 0) < self.per_endpoint:
                    busy[row.target] = busy.get(row.target, 0) + 1
                    picked.append(row)
        return picked

    def _pick_robots(
        self, now: int, n: int, skip: set[int], held: dict[str, int], scope: Collection[str] | None
    ) -> list[OutboxItem]:
        """The highest-priority due row of each robot that may take one now (one per robot per round)."""
        picked: list[OutboxItem] = []
        blocked = set(held)
        while len(picked) < n:
            rows = self.store.due(
                now_ms=now, limit=1, exclude=skip, channel="robot", exclude_targets=sorted(blocked), buildings=scope
            )
            if not rows:
                break
            picked.append(rows[0])
            blocked.add(rows[0].target)
        return picked

    def _start(self, items: list[OutboxItem]) -> set[int]:
        """Start what may go now, in the given (priority) order; returns the ids started."""
        started: set[int] = set()
        for item in items:  # in priority order
            if item.id in self._inflight or item.id in self._unflushed or self._busy[item.channel] >= self.workers:
                continue
            if item.channel == "webhook":
                if self._endpoint_busy.get(item.target, 0) >= self.per_endpoint:
                    continue
                self._endpoint_busy[item.target] = self._endpoint_busy.get(item.target, 0) + 1
            elif item.channel == "robot":
                robot = self.robots.get(item.target)
                now = self.clock()
                if self._endpoint_busy.get(item.target, 0) >= 1 or (
                    robot is not None and self.limiter.free_at(item.target, limit=robot.limit_per_min, now_ms=now) > now
                ):
                    continue
                self._endpoint_busy[item.target] = 1
                self.limiter.record(item.target, now_ms=now)
            self._busy[item.channel] += 1
            self._inflight[item.id] = asyncio.create_task(self._deliver(item), name=f"deliver-{item.id}")
            started.add(item.id)
        return started

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            if item.channel == "sms":
                await self._deliver_sms(item)
            elif item.channel == "robot":
                await self._deliver_robot(item)
            elif item.channel == "voice":
                await self._deliver_voice(item)
            else:
                await self._deliver_webhook(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one bad row must not stop delivery of the others
            log.exception("delivery of outbox row %d failed unexpectedly", item.id)
            now = self.clock()
            self._outcome(
                Outcome(
                    item.id,
                    "pending",
                    now,
                    f"internal error: {exc}",
                    next_ms=now + self._backoff(item.attempts),
                    attempted=False,
                )
            )
        finally:
            self._inflight.pop(item.id, None)
            self._busy[item.channel] -= 1
            if item.channel in ("webhook", "robot"):
                left = self._endpoint_busy.get(item.target, 1) - 1
                if left > 0:
                    self._endpoint_busy[item.target] = left
                else:
                    self._endpoint_busy.pop(item.target, None)
            self.wake()

    def _backoff(self, attempts: int) -> int:
        retry = self.notify.retry
        ceiling = min(retry.max_s, retry.base_s * (2 ** min(attempts, 30)))
        return int(1000 * self.rng.uniform(ceiling / 2, ceiling))  # jitter: spread retries of many rows

    def _retry_delay_ms(self, attempts: int, result: SendResult) -> int:
        """When to try a retryable failure again: the receiver's ``Retry-After`` (capped) if it gave one, else the
        jittered backoff."""
        if result.retry_after_s is not None:
            return int(1000 * min(result.retry_after_s, self.notify.retry.max_retry_after_s))
        return self._backoff(attempts)

    def _outcome(self, outcome: Outcome) -> None:
        self._outcomes.append(outcome)
        self._unflushed.add(outcome.id)

    # ------------------------------------------------------------------ webhooks
    def _endpoint(self, url: str) -> WebhookConfig | None:
        for hook in (*self.notify.webhooks, *self.notify.drill_receivers.webhooks):
            if hook.url == url:
                return hook
        return None

    async def _deliver_webhook(self, item: OutboxItem) -> None:
        now = self.clock()
        assert self._session is not None
        if now - item.created_ms > self.notify.retry.give_up_after_s * 1000:
            self._outcome(Outcome(item.id, "dead", now, "gave up: too old", attempted=False))
            self._count("dead")
            return
        if item.channel == "governance":
            gov = self.notify.governance
            if gov is None:
                self._outcome(Outcome(item.id, "failed", now, "governance no longer configured", attempted=False))
                return
            result = await governance.send(self._session, gov, msg_id=item.msg_id, body=item.body)
        else:
            hook = self._endpoint(item.target)
            if hook is None:
                self._outcome(Outcome(item.id, "failed", now, "endpoint no longer configured", attempted=False))
                return
            result = await webhook.send(
                self._session,
                url=hook.url,
                secret=hook.secret.get_secret_value(),
                msg_id=item.msg_id,
                body=item.body,
                timeout_s=hook.timeout_s,
                allow_private=hook.allow_private,
            )  # the signature's timestamp is wall-clock time: receivers check it against theirs
        await self._record(item, result)

    # ------------------------------------------------------------------ group robots
    async def _deliver_robot(self, item: OutboxItem) -> None:
        now = self.clock()
        assert self._session is not None
        if now - item.created_ms > self.notify.retry.give_up_after_s * 1000:
            self._outcome(Outcome(item.id, "dead", now, "gave up: too old", attempted=False))
            self._count("dead")
            return
        robot = self.robots.get(item.target)
        if robot is None:
            self._outcome(Outcome(item.id, "failed", now, "robot no longer configured", attempted=False))
            return
        body = await self._io(self.store.claim, item.id, now_ms=now)
        if body is None:
            return  # cancelled meanwhile
        # Rendered now, not when queued: the elapsed time is the time the group reads it.
        message = render(IncidentUpdate.from_json(body), msg_id=item.msg_id, lang=robot.lang, now_ms=now)
        result = await robot_sender(robot.platform)(self._session, robot, message)
        await self._record(item, result)

    async def _record(self, item: OutboxItem, result: SendResult) -> None:
        now = self.clock()
        if result.ok:
            self._outcome(Outcome(item.id, "sent", now))
            self._count(f"{item.channel}_sent")
        elif result.disable:
            self._outcome(Outcome(item.id, "failed", now, result.error))
            await self._io(self.store.disable_endpoint, item.target, reason=result.error or "disabled", now_ms=now)
            log.error("webhook endpoint %s answered 410 Gone: disabled", item.target)
            self._count("endpoint_disabled")
        elif result.retryable:
            delay = self._retry_delay_ms(item.attempts, result)
            self._outcome(Outcome(item.id, "pending", now, result.error, next_ms=now + delay))
            self._count(f"{item.channel}_retry")
        else:
            self._outcome(Outcome(item.id, "failed", now, result.error))
            log.error("notification %s to %s failed permanently: %s", item.msg_id, item.target, result.error)
            self._count(f"{item.channel}_failed")

    # ------------------------------------------------------------------ SMS
    def _day_start_ms(self, now: int) -> int:
        local = datetime.fromtimestamp(now / 1000, tz=UTC).astimezone(ZoneInfo(self.notify.timezone))
        return int(local.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000)

    async def _deliver_sms(self, item: OutboxItem) -> None:
        assert self._session is not None and self._sms_send is not None and self.notify.sms is not None
        guard = await self._io(self._sms_guard, item)
        if guard is None:
            return
        message, sent_today = guard
        result = await self._sms_send(self._session, self.notify.sms, message)
        await self._io(self._sms_record, item, result, sent_today)

    def _sms_guard(self, item: OutboxItem) -> tuple[SmsMessage, int] | None:
        """Budget and rate limits, then the durable ``attempting`` mark (database thread).  None: do not send now."""
        sms = self.notify.sms
        now = self.clock()
        assert item.phone is not None
        if sms is None or self._sms_send is None:
            self.store.mark_done(item.id, state="failed", now_ms=now, error="sms not configured")
            return None
        sent_today = self.store.sms_count(phone=item.phone, since_ms=self._day_start_ms(now))
        if sent_today >= sms.daily_budget:
            self.store.mark_done(
                item.id,
                state="suppressed",
                now_ms=now,
                error=f"daily budget of {sms.daily_budget} SMS for this number reached",
            )
            log.error("SMS to %s suppressed: daily budget %d reached", item.recipient, sms.daily_budget)
            self._count("sms_suppressed")
            return None
        # Rate limits delay (never drop) a page: per recipient, then globally, over a sliding minute.
        for phone, limit in ((item.phone, sms.rate.per_recipient_per_min), (None, sms.rate.global_per_min)):
            if self.store.sms_count(phone=phone, since_ms=now - 60_000) >= limit:
                oldest = self.store.oldest_sms_since(phone=phone, since_ms=now - 60_000) or now
                self.store.mark_retry(item.id, next_ms=oldest + 60_001, error="rate limited")
                self._count("sms_rate_limited")
                return None
        body = orjson.loads(item.body)
        lang = body.get("lang", "zh")
        template = sms.templates.get(lang) or next(iter(sms.templates.values()))
        message = SmsMessage(
            msg_id=item.msg_id,
            phone=item.phone,
            lang=lang,
            template=template,
            params={k: str(v) for k, v in body.get("params", {}).items()},
        )
        # Durable "attempting" BEFORE the request: a crash from here on can never cause a blind resend.
        self.store.mark_attempting(item.id, now_ms=now)
        return message, sent_today

    def _sms_record(self, item: OutboxItem, result: SendResult, sent_today: int) -> None:
        sms = self.notify.sms
        assert sms is not None
        now = self.clock()
        if result.ok:
            self.store.mark_done(item.id, state="sent", now_ms=now, error=None)
            self._count("sms_sent")
            if sent_today + 1 == sms.warn_at:
                log.warning(
                    "SMS budget warning: %s has had %d of %d SMS today",
                    item.recipient,
                    sent_today + 1,
                    sms.daily_budget,
                )
                self._count("sms_budget_warning")
                self.store.publish(
                    AlertChange(
                        "sms.budget_warning",
                        item.alert_id,
                        item.incident_id,
                        now,
                        {"recipient": item.recipient, "sent_today": sent_today + 1, "budget": sms.daily_budget},
                    )
                )
        elif result.unknown:
            self.store.mark_done(item.id, state="unknown", now_ms=now, error=result.error)
            log.error(
                "SMS %s to %s: outcome unknown (%s); not resent, reconcile with the provider",
                item.msg_id,
                item.recipient,
                result.error,
            )
            self._count("sms_unknown")
        elif result.retryable:
            delay = self._retry_delay_ms(item.attempts, result)
            self.store.mark_retry(item.id, next_ms=now + delay, error=result.error)
            self._count("sms_retry")
        else:
            self.store.mark_done(item.id, state="failed", now_ms=now, error=result.error)
            log.error("SMS %s to %s failed: %s", item.msg_id, item.recipient, result.error)
            self._count("sms_failed")

    # ------------------------------------------------------------------ voice
    async def _deliver_voice(self, item: OutboxItem) -> None:
        assert self._session is not None
        voice = self.notify.voice
        call = await self._io(self._voice_guard, item)
        if call is None or voice is None:
            return
        result = await voice_sender(voice.provider)(self._session, voice, call)
        await self._io(self._voice_record, item, result)

    def _voice_guard(self, item: OutboxItem) -> VoiceCall | None:
        """The daily budget, then the durable ``attempting`` mark (database thread).  None: do not call now."""
        voice = self.notify.voice
        now = self.clock()
        assert item.phone is not None
        if voice is None:
            self.store.mark_done(item.id, state="failed", now_ms=now, error="voice not configured")
            return None
        if self.store.voice_count(phone=item.phone, since_ms=self._day_start_ms(now)) >= voice.daily_budget:
            self.store.mark_done(
                item.id,
                state="suppressed",
                now_ms=now,
                error=f"daily budget of {voice.daily_budget} calls for this number reached",
            )
            log.error("voice call to %s suppressed: daily budget %d reached", item.recipient, voice.daily_budget)
            self._count("voice_suppressed")
            return None
        body = orjson.loads(item.body)
        lang = body.get("lang", "zh")
        template = voice.templates.get(lang) or next(iter(voice.templates.values()))
        call = VoiceCall(
            msg_id=item.msg_id,
            out_id=str(item.id),
            phone=item.phone,
            lang=lang,
            template=template,
            params={k: str(v) for k, v in body.get("params", {}).items()},
            play_times=voice.play_times,
        )
        # Durable "attempting" BEFORE the request: a crash from here on never rings the phone a second time.
        self.store.mark_attempting(item.id, now_ms=now)
        return call

    def _voice_record(self, item: OutboxItem, result: SendResult) -> None:
        now = self.clock()
        if result.ok:
            self.store.voice_placed(item.id, call_id=result.provider_id, now_ms=now)
            self._count("voice_sent")
        elif result.unknown:
            self.store.mark_done(item.id, state="unknown", now_ms=now, error=result.error)
            log.error(
                "voice call %s to %s: outcome unknown (%s); not repeated", item.msg_id, item.recipient, result.error
            )
            self._count("voice_unknown")
        elif result.retryable:
            delay = self._retry_delay_ms(item.attempts, result)
            self.store.mark_retry(item.id, next_ms=now + delay, error=result.error)
            self._count("voice_retry")
        else:
            self.store.mark_done(item.id, state="failed", now_ms=now, error=result.error)
            log.error("voice call %s to %s failed: %s", item.msg_id, item.recipient, result.error)
            self._count("voice_failed")
