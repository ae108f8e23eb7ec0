"""Bench: alert-to-webhook latency, p50/p99, under load, as ratios to a bare aiohttp POST measured in the same run.

Two measurements:

1. **store -> webhook** (a child process, so that the receiver's thread does not share its GIL):
   ``AlertStore.apply`` (one fsync'ed transaction, from a thread, the way the gateway's group commit calls it) until
   the bench's receiver has read the signed ``alert.raised`` webhook.  Background: 200 supervisory/trouble/warning
   alerts per second across 100 buildings, all delivered to the same endpoint (fire must overtake them), plus a
   200-detector storm in one building; fire alarms in other buildings every ``1/fire_rate`` s.
2. **MQTT publish -> webhook** through ``firegrid run`` (when the gateway can start): background telemetry at
   ``--rate`` readings/s, alarm readings published by a second client; the clock starts when the alarm is handed to
   paho and stops when the signed webhook naming the detector has been read.

The baseline for both is a bare aiohttp POST round trip to the same receiver (no store, no signing), measured in
this run.  ``--quick`` shortens everything to a few seconds.

    python -m bench.alerts [--quick] [--json] [--no-e2e]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import multiprocessing
import random
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import (
    BenchError,
    Community,
    Figure,
    FiregridProcess,
    Publisher,
    bench_parser,
    emit,
    firegrid_config,
    first_arrival_by_key,
    paced_in_thread,
    percentile,
    services,
    wait_until,
)
from common.webhooks import sign
from testkit.webhooks import ThreadedReceiver


def _transition(device: str, building: str, severity: Any, ts_ms: int) -> Any:
    from rules.types import AlertTransition, Evidence

    return AlertTransition(
        transition="raised",
        key=f"bench:{building}:{device}",
        rule="bench",
        severity=severity,
        building=building,
        floor=1,
        device=device,
        ts_ms=ts_ms,
        reason="bench",
        value=12.5,
        grid="g01",
        evidence=(Evidence(ts_ms=ts_ms, device=device, metric="obscuration", value=12.5),),
    )


async def _baseline(url: str, secret: str, n: int) -> list[float]:
    """Bare aiohttp POST round trips (ms) of a webhook-sized, signed body to the same receiver (which verifies it,
    as it does for firegrid's webhooks): no store, no outbox, no queue."""
    import aiohttp

    body = b'{"type":"alert.raised","timestamp":"2026-11-29T10:00:00Z","data":{"device":"baseline"}}' + b" " * 800
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(n + 5):
            stamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": f"msg_base{i}",
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(secret, f"msg_base{i}", stamp, body),
            }
            started = time.monotonic_ns()
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
            if i >= 5:  # the first requests open the connection
                out.append((time.monotonic_ns() - started) / 1e6)
    return out


async def _store_to_webhook(url: str, secret: str, *, quick: bool, workdir: Path) -> dict[str, Any]:
    """Runs in a child process (so the receiver's thread does not share our GIL): returns when the send time of
    each fire alert, the parent matches them to arrivals."""
    from alerts.config import NotifyConfig
    from alerts.delivery import Notifier
    from alerts.store import AlertStore
    from rules.types import Severity

    notify = NotifyConfig.model_validate(
        {
            "webhooks": [
                {
                    "url": url,
                    "secret": secret,
                    "events": ["alert.*", "incident.*"],
                    "min_severity": "warning",
                    "allow_private": True,
                    "timeout_s": 10,
                }
            ],
            "workers": 8,
        }
    )
    store = AlertStore(workdir / "alerts.sqlite", notify=notify)
    notifier = Notifier(store)
    task = asyncio.create_task(notifier.run())
    duration = 3.0 if quick else 15.0
    fire_rate = 10.0 if quick else 20.0
    background_rate = 200.0  # non-fire alerts per second (10 per 50 ms commit), each with its webhooks
    sent_at: dict[str, int] = {}
    rng = random.Random(7)
    stop = asyncio.Event()

    async def background() -> None:
        n = 0
        started = time.monotonic()
        while not stop.is_set():
            # Group commits every 50 ms, like the gateway's.
            due = int((time.monotonic() - started) * background_rate) - n
            batch = [
                _transition(
                    f"bg{n + k}",
                    f"bg{rng.randrange(100):03d}",
                    rng.choice([Severity.SUPERVISORY, Severity.TROUBLE, Severity.WARNING]),
                    int(time.time() * 1000),
                )
                for k in range(max(0, due))
            ]
            n += len(batch)
            if batch:
                await asyncio.to_thread(store.apply, batch, now_ms=int(time.time() * 1000))
            await asyncio.sleep(0.05)

    async def storm() -> None:
        await asyncio.sleep(duration * 0.4)
        batch = [_transition(f"storm{k}", "storm01", Severity.FIRE, int(time.time() * 1000)) for k in range(200)]
        await asyncio.to_thread(store.apply, batch, now_ms=int(time.time() * 1000))

    bg = asyncio.create_task(background())
    st = asyncio.create_task(storm())
    keys: list[str] = []
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < duration:
        key = f"fire{i:05d}"
        keys.append(key)
        sent_at[key] = time.monotonic_ns()
        await asyncio.to_thread(
            store.apply,
            [_transition(key, f"f{i:04d}", Severity.FIRE, int(time.time() * 1000))],
            now_ms=int(time.time() * 1000),
        )
        i += 1
        await asyncio.sleep(1.0 / fire_rate)
    stop.set()
    await asyncio.gather(bg, st)
    deadline = time.monotonic() + 30
    fire_prio = int(Severity.FIRE) * 10
    while time.monotonic() < deadline and any(  # noqa: ASYNC110 - rows in SQLite, no event to await
        r.priority >= fire_prio for r in store.outbox(state="pending")
    ):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)  # let the last outcomes be recorded
    backlog_left = len(store.outbox(state="pending"))
    notifier.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    total = len(store.outbox())
    store.close()
    return {
        "sent_at": sent_at,
        "fires": len(keys),
        "outbox_rows": total,
        "backlog_left": backlog_left,
    }


class ThreadedAliyun:
    """The Aliyun SMS emulator of testkit/emulators (it verifies every ACS3-HMAC-SHA256 signature) in its own thread."""

    KEYS = {"access_key_id": "LTAI5tBench", "access_key_secret": "bench-secret", "sign_name": "东风社区"}

    def __init__(self) -> None:
        from testkit.emulators.aliyun import AliyunSms

        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.emulator: AliyunSms | None = None
        self._cls = AliyunSms
        self._thread = threading.Thread(target=self._run, name="aliyun-emulator", daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            self.emulator = self._cls(templates={"SMS_1", "SMS_2"}, **self.KEYS)
            await self.emulator.start()
            self._stop = asyncio.Event()
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self._stop.wait()
            await self.emulator.stop()

        asyncio.run(serve())

    def __enter__(self) -> ThreadedAliyun:
        self._thread.start()
        if not self._ready.wait(10):
            raise BenchError("SMS emulator did not start")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=5)

    def notify_section(self) -> dict[str, Any]:
        assert self.emulator is not None
        return {
            "provider": "aliyun",
            "endpoint": self.emulator.url + "/",
            "allow_private": True,
            **self.KEYS,
            "templates": {
                "zh": {"template_id": "SMS_1", "text": "{building}{location}{severity} {code}"},
                "en": {"template_id": "SMS_2", "text": "{building} {location} {severity} {code}"},
            },
            "daily_budget": 100_000,
            "rate": {"per_recipient_per_min": 100_000, "global_per_min": 100_000},
        }

    def arrivals(self) -> dict[str, int]:
        """Device id (from the location parameter) -> arrival time of its SMS."""
        assert self.emulator is not None
        out: dict[str, int] = {}
        for message in list(self.emulator.messages):
            device = str(message["params"].get("location", "")).split(" ")[-1]
            out.setdefault(device, int(message["at_ns"]))
        return out


def _store_phase(url: str, secret: str, quick: bool, workdir: Path) -> dict[str, Any]:
    return asyncio.run(_store_to_webhook(url, secret, quick=quick, workdir=workdir))


def _end_to_end(
    receiver: ThreadedReceiver, sms: ThreadedAliyun, *, quick: bool, rate: int, workdir: Path
) -> dict[str, Any]:
    community = Community(
        n_devices=200 if quick else 1000, n_buildings=20 if quick else 50, n_alarms=30 if quick else 100
    )
    duration = 4.0 if quick else 15.0
    with services(workdir / "services", influx=False) as svc:
        config = firegrid_config(
            broker_port=svc.broker.port,
            influx_url=None,
            workdir=workdir / "fg",
            buildings=community.buildings(),
            devices=community.devices(),
            webhook=receiver,
        )
        config["notify"]["roster"] = [{"name": "值班", "phone": "+8613800000001", "role": "grid_worker"}]
        config["notify"]["routes"] = [{"name": "fire", "tiers": [{"roles": ["grid_worker"]}]}]
        config["notify"]["sms"] = sms.notify_section()
        with (
            FiregridProcess(config=config, workdir=workdir / "fg") as proc,
            Publisher(port=svc.broker.port, client_id="bench-load", max_outstanding=200) as load,
            Publisher(port=svc.broker.port, client_id="bench-alarms", max_outstanding=100) as alarms,
        ):
            # Warm-up alarm: proves the path end to end before measuring.
            topic, payload = community.alarm(0)
            alarms.publish(topic, payload, mark=community.alarm_device(0))
            wait_until(
                lambda: bool(first_arrival_by_key(receiver.arrivals, [community.alarm_device(0)])),
                timeout=60,
                what="the warm-up alarm's webhook",
            )
            thread, _stop, _stats = paced_in_thread(load, community.telemetry(), rate=rate, duration_s=duration)
            ids = list(range(1, community.n_alarms))
            start = time.monotonic()
            for k, alarm_id in enumerate(ids):
                at = start + duration * (0.1 + 0.85 * k / max(1, len(ids) - 1))
                delay = at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                topic, payload = community.alarm(alarm_id)
                alarms.publish(topic, payload, mark=community.alarm_device(alarm_id))
            thread.join()
            keys = [community.alarm_device(i) for i in ids]
            with contextlib.suppress(BenchError):
                wait_until(
                    lambda: len(first_arrival_by_key(receiver.arrivals, keys)) == len(keys),
                    timeout=30,
                    what="alarm webhooks",
                )
            arrived = first_arrival_by_key(list(receiver.arrivals), keys)
            latencies = [(arrived[k] - alarms.sent_at[k]) / 1e6 for k in keys if k in arrived]
            with contextlib.suppress(BenchError):
                wait_until(lambda: len(set(keys) & set(sms.arrivals())) == len(keys), timeout=30, what="SMS")
            texts = sms.arrivals()
            sms_latencies = [(texts[k] - alarms.sent_at[k]) / 1e6 for k in keys if k in texts]
            sms_errors = len(sms.emulator.errors) if sms.emulator else -1
            del proc
    return {
        "latencies": latencies,
        "alarms": len(keys),
        "lost": len(keys) - len(latencies),
        "sms_latencies": sms_latencies,
        "sms_lost": len(keys) - len(sms_latencies),
        "sms_errors": sms_errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__.splitlines()[0] if __doc__ else "alerts bench")
    parser.add_argument("--no-e2e", action="store_true", help="skip MQTT -> firegrid run -> webhook")
    parser.add_argument("--rate", type=int, default=None, help="background telemetry readings/s for the e2e run")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    figures: list[Figure] = []
    notes: list[str] = []
    conditions: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="firegrid-bench-alerts-") as tmp, ThreadedReceiver() as receiver:
        workdir = Path(tmp)
        baseline = asyncio.run(_baseline(receiver.url, receiver.secret, 100 if quick else 500))
        base50, base99 = percentile(baseline, 50), percentile(baseline, 99)
        receiver.arrivals.clear()
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            result = pool.submit(_store_phase, receiver.url, receiver.secret, quick, workdir).result(timeout=300)
        sent_at = result.pop("sent_at")
        arrived = first_arrival_by_key(list(receiver.arrivals), list(sent_at))
        lat = [(arrived[k] - sent_at[k]) / 1e6 for k in sent_at if k in arrived]  # CLOCK_MONOTONIC: system-wide
        result["lost"] = len(sent_at) - len(lat)
        label = "bare aiohttp POST round trip"
        figures += [
            Figure(
                "alerts.store_to_webhook_p50_ms",
                percentile(lat, 50),
                "ms",
                "store.apply -> webhook, p50",
                better="lower",
                baseline=base50,
                baseline_label=label,
            ),
            Figure(
                "alerts.store_to_webhook_p99_ms",
                percentile(lat, 99),
                "ms",
                "store.apply -> webhook, p99",
                better="lower",
                baseline=base99,
                baseline_label=label,
            ),
        ]
        conditions["store_phase"] = {k: v for k, v in result.items() if k != "latencies"}
        if result["lost"]:
            notes.append(f"{result['lost']} of {result['fires']} fire alerts had no webhook within 30 s")
        notes.append(
            f"store phase: {result['fires']} fire alerts among {result['outbox_rows']:,} outbox rows "
            "(non-fire background + a 200-detector storm)"
        )
        if not args.no_e2e:
            rate = args.rate or (500 if quick else 2000)
            receiver.arrivals.clear()
            try:
                with ThreadedAliyun() as sms:
                    e2e = _end_to_end(receiver, sms, quick=quick, rate=rate, workdir=workdir)
            except BenchError as exc:
                notes.append(f"MQTT -> webhook failed: {exc}".splitlines()[0])
            else:
                lat2 = e2e["latencies"]
                figures += [
                    Figure(
                        "alerts.mqtt_to_webhook_p50_ms",
                        percentile(lat2, 50),
                        "ms",
                        f"MQTT publish -> webhook @{rate}/s, p50",
                        better="lower",
                        baseline=base50,
                        baseline_label=label,
                    ),
                    Figure(
                        "alerts.mqtt_to_webhook_p99_ms",
                        percentile(lat2, 99),
                        "ms",
                        f"MQTT publish -> webhook @{rate}/s, p99",
                        better="lower",
                        baseline=base99,
                        baseline_label=label,
                    ),
                ]
                lat3 = e2e["sms_latencies"]
                figures += [
                    Figure(
                        "alerts.mqtt_to_sms_p50_ms",
                        percentile(lat3, 50),
                        "ms",
                        f"MQTT publish -> SMS at provider @{rate}/s, p50",
                        better="lower",
                        baseline=base50,
                        baseline_label=label,
                    ),
                    Figure(
                        "alerts.mqtt_to_sms_p99_ms",
                        percentile(lat3, 99),
                        "ms",
                        f"MQTT publish -> SMS at provider @{rate}/s, p99",
                        better="lower",
                        baseline=base99,
                        baseline_label=label,
                    ),
                ]
                conditions["e2e"] = {
                    "rate": rate,
                    "alarms": e2e["alarms"],
                    "lost": e2e["lost"],
                    "sms_lost": e2e["sms_lost"],
                    "sms_signature_errors": e2e["sms_errors"],
                }
                if e2e["sms_lost"] or e2e["sms_errors"]:
                    notes.append(
                        f"SMS: {e2e['sms_lost']} alarms without an SMS, {e2e['sms_errors']} requests "
                        "failed the emulator's signature check"
                    )
                if e2e["lost"]:
                    notes.append(f"{e2e['lost']} of {e2e['alarms']} alarms had no webhook within 30 s")
        if receiver.rejected:
            notes.append(f"{len(receiver.rejected)} webhooks failed signature verification")
    figures = [f for f in figures if not math.isnan(f.value)]
    emit("alerts", figures, as_json=args.json, quick=quick, notes=notes, conditions=conditions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
