"""The InfluxDB writer and the spool, against a real InfluxDB 1.x (with a real aiohttp server in front of it where
a test needs 503/429/Retry-After)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from aiohttp import ClientSession, web

from gateway.config import InfluxConfig
from gateway.metrics import Metrics
from gateway.storage.influx import DeadLetters, InfluxWriter, alert_line, reading_line
from gateway.storage.spool import Spool
from rules.types import AlertTransition, DeviceRef, Reading, Severity
from testkit.services import InfluxServer, free_port

REF = DeviceRef(building="b01", device="d001", kind="smoke", floor=3, grid="g1")


def _lines(n: int, *, start_ms: int = 1_700_000_000_000, device: str = "d001") -> list[bytes]:
    ref = DeviceRef(building="b01", device=device, kind="smoke", floor=3, grid="g1")
    out = []
    for i in range(n):
        line = reading_line(Reading(ref=ref, ts_ms=start_ms + i, values={"obscuration": i % 5, "alarm": False}))
        assert line is not None
        out.append(line)
    return out


def _writer(tmp_path: Path, url: str, **overrides: object) -> tuple[InfluxWriter, Spool, DeadLetters, Metrics]:
    settings: dict[str, object] = {"batch_size": 500, "flush_interval_s": 0.05, "timeout_s": 2, **overrides}
    config = InfluxConfig(url=url, **settings)  # type: ignore[arg-type]
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1_048_576)
    dead = DeadLetters(tmp_path / "dead.sqlite")
    metrics = Metrics()
    writer = InfluxWriter(config=config, spool=spool, dead_letters=dead, metrics=metrics, max_backoff_s=0.5)
    return writer, spool, dead, metrics


def test_line_protocol_schema() -> None:
    line = reading_line(Reading(ref=REF, ts_ms=5, values={"obscuration": 3, "alarm": True, "fault": 'a "b"'}))
    assert line == b'smoke,building=b01,device=d001,floor=3,grid=g1 obscuration=3.0,alarm=true,fault="a \\"b\\"" 5'
    odd = DeviceRef(building="b 1", device="d,1", kind="heat")
    assert reading_line(Reading(ref=odd, ts_ms=1, values={"celsius": 21.5})) == (
        b"heat,building=b\\ 1,device=d\\,1 celsius=21.5 1"
    )
    assert reading_line(Reading(ref=REF, ts_ms=1, values={})) is None
    t = AlertTransition(
        transition="raised",
        key="k",
        rule="smoke-fire",
        severity=Severity.FIRE,
        building="b01",
        floor=3,
        device="d001",
        ts_ms=9,
        reason="obscuration 12 > 4",
        value=12.0,
        confirmed=True,
    )
    assert alert_line(t).startswith(b"alert,building=b01,device=d001,floor=3,rule=smoke-fire,severity=fire ")


def test_v1_and_v2_write_endpoints() -> None:
    from gateway.storage.influx import InfluxClient

    v1 = InfluxClient(
        InfluxConfig(url="http://db:8086", database="fg", retention_policy="week", username="u", password="p")
    )
    assert v1.write_url == "http://db:8086/write"
    assert v1.write_params == {"db": "fg", "precision": "ms", "rp": "week"}
    assert v1._auth_headers["Authorization"] == "Basic dTpw"  # u:p
    v2 = InfluxClient(InfluxConfig(url="http://db:8086", api="v2", org="o", bucket="b", token="tok"))
    assert v2.write_url == "http://db:8086/api/v2/write"
    assert v2.write_params == {"org": "o", "bucket": "b", "precision": "ms"}
    assert v2._auth_headers == {"Authorization": "Token tok"}


async def test_bad_line_is_dead_lettered_alone(tmp_path: Path, influx: InfluxServer) -> None:
    """InfluxDB 1.6 answers one unparsable / type-conflicting line with 400 "partial write" (and stores the rest):
    only the offending lines go to the dead-letter table; every valid line is in InfluxDB."""
    writer, spool, dead, _metrics = _writer(tmp_path, influx.url)
    good = _lines(300)
    bad_type = b'smoke,building=b01,device=d009 obscuration="text" 1700000000500'  # field type conflict
    bad_syntax = b"smoke,building=b01 obscuration= 1700000000600"
    spool.append(telemetry=good[:100], alerts=[], first_ts_ms=0)
    spool.append(
        telemetry=[*good[100:200], bad_type, *good[200:250], bad_syntax, *good[250:]], alerts=[], first_ts_ms=0
    )
    try:
        while await writer.flush_once():
            pass
        assert influx.count("smoke", "obscuration") == 300
        letters = dead.list()
        assert sorted(item["line"].encode() for item in letters) == sorted([bad_type, bad_syntax])
        assert all(item["status"] == 400 for item in letters)
        assert spool.pending_points == 0
    finally:
        await writer.close()


async def test_retries_honour_retry_after_then_write(tmp_path: Path, influx: InfluxServer) -> None:
    """A proxy answers 503 with Retry-After: 1, then 429, then forwards: the writer waits as told and nothing is
    lost or dead-lettered."""
    answers = [(503, {"Retry-After": "1"}), (429, {}), None]
    seen: list[float] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(time.monotonic())
        answer = answers.pop(0) if answers else None
        body = await request.read()
        if answer is not None:
            status, headers = answer
            return web.Response(status=status, headers=headers, text="busy")
        # (aiohttp has already un-gzipped the request body)
        async with (
            ClientSession() as session,
            session.post(f"{influx.url}/write", params=request.query, data=body) as response,
        ):
            return web.Response(status=response.status, body=await response.read())

    app = web.Application()
    app.router.add_post("/write", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    writer, spool, dead, metrics = _writer(tmp_path, f"http://127.0.0.1:{port}")
    spool.append(telemetry=_lines(50), alerts=[], first_ts_ms=0)
    try:
        assert await asyncio.wait_for(writer.flush_once(), 30)
        assert influx.count("smoke", "obscuration") == 50
        assert len(seen) == 3
        assert seen[1] - seen[0] >= 0.95  # Retry-After: 1 honoured
        assert dead.list() == []
        text = metrics.render().decode()
        assert 'firegrid_influx_write_failures_total{status="503"} 1.0' in text
        assert 'firegrid_influx_write_failures_total{status="429"} 1.0' in text
    finally:
        await writer.close()
        await runner.cleanup()


def test_spool_cap_drops_oldest_telemetry_never_alerts(tmp_path: Path, monkeypatch) -> None:
    import gateway.storage.spool as spool_module

    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 4096)
    spool = Spool(tmp_path / "spool", max_bytes=20_000)
    alerts = [b'alert,building=b01 transition="raised" %d' % i for i in range(50)]
    spool.append(telemetry=[], alerts=alerts, first_ts_ms=1)  # ~1.5 KB of alerts
    dropped = 0
    for chunk in range(40):
        dropped += spool.append(telemetry=_lines(20, start_ms=chunk * 100), alerts=[], first_ts_ms=chunk * 100)
    assert dropped > 0
    assert spool.size_bytes <= 20_000
    assert spool.dropped_points == dropped
    assert spool.streams["alert"].pending_points == 50  # never dropped
    assert spool.pending_points == 50 + 800 - dropped
    # what is left is the newest telemetry, in order, after the alerts
    first = spool.read(10_000)
    assert first is not None and first.stream == "alert" and first.points == 50
    spool.commit(first)
    rest = spool.read(10_000)
    assert rest is not None and rest.stream == "telemetry"
    stamps = [int(line.rsplit(b" ", 1)[1]) for line in rest.lines]
    assert stamps == sorted(stamps) and stamps[-1] == 3900 + 19


def test_spool_survives_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1_048_576)
    spool.append(telemetry=_lines(10), alerts=[], first_ts_ms=0)
    batch = spool.read(4)
    assert batch is not None
    spool.close()
    segment = next((tmp_path / "spool" / "telemetry").glob("*.seg"))
    with segment.open("ab") as fh:
        fh.write(b"\x40\x00\x00\x00garbage")  # the process died in the middle of the next record
    reopened = Spool(tmp_path / "spool", max_bytes=1_048_576)
    assert reopened.pending_points == 10
    reopened.append(telemetry=_lines(5, start_ms=1_800_000_000_000), alerts=[], first_ts_ms=0)
    everything = reopened.read(1000)
    assert everything is not None and everything.points == 15


async def _until(condition, *, within: float, what: str) -> float:
    """Await ``condition()`` (run in a thread: it may query InfluxDB) to become true; the seconds it took."""
    started = time.monotonic()
    while not await asyncio.to_thread(condition):
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _alert(i: int) -> bytes:
    return alert_line(
        AlertTransition(
            transition="raised",
            key=f"smoke-obscuration/b01/a{i:03d}",
            rule="smoke-obscuration",
            severity=Severity.FIRE,
            building="b01",
            floor=1,
            device=f"a{i:03d}",
            ts_ms=1_700_000_000_000 + i,
            reason="smoke obscuration: obscuration >= 3 for 5 s",
        )
    )


async def test_burst_tail_is_written_while_alert_points_keep_coming(tmp_path: Path, influx: InfluxServer) -> None:
    """A telemetry burst, then silence, while an alert point arrives more often than ``flush_interval_s`` (the
    engine's tick raising timed rules after a burst of alarms does that): the tail of the burst, less than a batch,
    is in InfluxDB within about one flush interval.  Each alert point is written at once, and that write must not
    restart the tail's clock (it did: the tail stayed spooled for as long as the alert points came)."""
    interval = 0.5
    writer, spool, _dead, _metrics = _writer(tmp_path, influx.url, flush_interval_s=interval)
    burst = _lines(1_250)  # two full batches of 500 and a tail of 250
    alerts_sent = 0
    stop_alerts = asyncio.Event()

    async def alert_source() -> None:
        nonlocal alerts_sent
        while not stop_alerts.is_set():
            spool.append(telemetry=[], alerts=[_alert(alerts_sent)], first_ts_ms=0)
            alerts_sent += 1
            writer.wake()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_alerts.wait(), interval / 5)  # pacing the source, 5 per interval

    task = asyncio.create_task(writer.run())
    source = asyncio.create_task(alert_source())
    try:
        for start in range(0, len(burst), 125):
            spool.append(telemetry=burst[start : start + 125], alerts=[], first_ts_ms=0)
            writer.wake()
        took = await _until(
            lambda: influx.count("smoke", "obscuration") == len(burst),
            within=10 * interval,
            what="the burst's tail in InfluxDB while alert points keep coming",
        )
        assert took < 10 * interval
        assert alerts_sent >= 2  # the alert points did come meanwhile
        stop_alerts.set()
        await source
        await _until(
            lambda: influx.count("alert", "reason") == alerts_sent, within=10 * interval, what="every alert point"
        )
        await _until(lambda: spool.pending_points == 0, within=10 * interval, what="an empty spool")
    finally:
        stop_alerts.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await writer.close()


async def test_writer_caught_up_with_a_full_segment(tmp_path: Path, influx: InfluxServer) -> None:
    """The writer drains a full segment to its end, so the spool deletes it; the points appended next go to a new
    segment that is read from its start (the number was reused and read from the old segment's end: nothing was
    readable until it grew past that offset, then a record's middle) and survive a restart."""
    config = InfluxConfig(url=influx.url, batch_size=500, flush_interval_s=0.05, timeout_s=2)
    spool = Spool(tmp_path / "spool", max_bytes=32_768)  # segments of 4,096 bytes
    stream = spool.streams["telemetry"]
    writer = InfluxWriter(
        config=config, spool=spool, dead_letters=DeadLetters(tmp_path / "dead.sqlite"), metrics=Metrics()
    )
    try:
        sent = 0
        while not stream.segments or stream.segments[-1].size < stream.segment_bytes:
            spool.append(telemetry=_lines(1, start_ms=1_700_000_000_000 + sent), alerts=[], first_ts_ms=0)
            sent += 1
        while await writer.flush_once():
            pass
        assert stream.segments == []  # caught up with a full segment: deleted
        spool.append(telemetry=_lines(5, start_ms=1_800_000_000_000), alerts=[], first_ts_ms=0)
        spool.close()
        spool = Spool(tmp_path / "spool", max_bytes=32_768)  # (a restart, too)
        writer.spool = spool
        assert spool.pending_points == 5
        while await writer.flush_once():
            pass
        assert spool.pending_points == 0
        assert influx.count("smoke", "obscuration") == sent + 5
    finally:
        await writer.close()
        spool.close()


def test_spool_stale_cursor_rereads_its_segment(tmp_path: Path) -> None:
    """A cursor that is not on a record boundary of its segment (left behind by the segment-number reuse above) is
    reset to the segment's start on open: the points are written again (idempotent), none is stranded."""
    spool = Spool(tmp_path / "spool", max_bytes=1_048_576)
    spool.append(telemetry=_lines(3), alerts=[], first_ts_ms=0)
    spool.append(telemetry=_lines(4, start_ms=1_700_000_001_000), alerts=[], first_ts_ms=0)
    spool.close()
    segment = next((tmp_path / "spool" / "telemetry").glob("*.seg"))
    for offset in (segment.stat().st_size + 500, 7):  # past the end; inside the first record
        (tmp_path / "spool" / "telemetry" / "cursor.json").write_text(
            json.dumps({"segment": int(segment.stem), "offset": offset})
        )
        reopened = Spool(tmp_path / "spool", max_bytes=1_048_576)
        assert reopened.pending_points == 7
        batch = reopened.read(100)
        assert batch is not None and batch.points == 7 and batch.lines[0] == _lines(1)[0]
        reopened.close()


def test_spool_age_is_the_first_pending_record(tmp_path: Path) -> None:
    """``oldest_pending_ts`` (firegrid_spool_age_seconds) is the record after the cursor, not the segment's first."""
    spool = Spool(tmp_path / "spool", max_bytes=1_048_576)
    spool.append(telemetry=_lines(3), alerts=[], first_ts_ms=1_000)
    spool.append(telemetry=_lines(3), alerts=[], first_ts_ms=2_000)
    first = spool.read(3)
    assert first is not None and first.points == 3 and first.rest == 3
    spool.commit(first)
    assert spool.oldest_pending_ts() == 2_000
    rest = spool.read(100)
    assert rest is not None and rest.rest == 0
    spool.commit(rest)
    assert spool.oldest_pending_ts() is None
