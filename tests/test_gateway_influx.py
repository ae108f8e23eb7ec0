"""The InfluxDB writer and the spool, against a real InfluxDB 1.x (with a real aiohttp server in front of it where
a test needs 503/429/Retry-After)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from aiohttp import ClientSession, web

from gateway.config import InfluxConfig
from gateway.influx import DeadLetters, InfluxWriter, alert_line, reading_line
from gateway.metrics import Metrics
from gateway.spool import Spool
from rules.types import AlertTransition, DeviceRef, Reading, Severity
from tests.harness.services import InfluxServer, free_port

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
    config = InfluxConfig(url=url, batch_size=500, flush_interval_s=0.05, timeout_s=2, **overrides)  # type: ignore[arg-type]
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
    from gateway.influx import InfluxClient

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
    import gateway.spool as spool_module

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
