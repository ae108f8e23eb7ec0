"""InfluxDB writer: line protocol over aiohttp, fed from the on-disk spool, for InfluxDB 1.x (``/write``) and 2.x
(``/api/v2/write``), precision ms, gzip.

Schema: measurement = device kind; tags ``building``, ``device``, ``floor``, ``grid``; fields = the metrics (booleans
stay booleans; every number is written as a float so that ``3`` and ``3.5`` never make a field-type conflict).  Alert
transitions are measurement ``alert``.  A point is keyed by its tags and timestamp, so writing it twice (after a
crash, or while bisecting a rejected batch) is idempotent.

Failure handling (the writer is never on the MQTT acknowledgement path, only the spool append is):
* connection errors, 5xx and 429: retry the same batch with capped exponential backoff and jitter, honouring
  ``Retry-After``; the spool keeps everything meanwhile.
* 400/422: bisect the batch to find the offending lines and put only those in the dead-letter table.  InfluxDB 1.6
  answers a batch with one bad line "400 partial write" and stores the valid ones; re-sending them while bisecting
  is harmless because points are idempotent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from common.db import open_database
from gateway.config import InfluxConfig
from gateway.metrics import Metrics
from gateway.secrets import reveal
from gateway.storage.spool import Batch, Spool
from rules.types import AlertTransition, DeviceRef, MetricValue, Reading

log = logging.getLogger("firegrid.influx")


class InfluxError(Exception):
    """A write or query failed.  ``retryable`` says whether trying again later can succeed."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


# --- line protocol --------------------------------------------------------------------------------------------------

_TAG_ESCAPE = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n"})
_MEASUREMENT_ESCAPE = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n"})


def _tag(value: str) -> str:
    return value.translate(_TAG_ESCAPE)


def _field(value: MetricValue | None) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(float(value))
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def _tags(ref_tags: Iterable[tuple[str, Any]]) -> str:
    return "".join(f",{key}={_tag(str(value))}" for key, value in ref_tags if value is not None and value != "")


_SERIES: dict[DeviceRef, str] = {}  # measurement + tags per device: computed once, not per reading


def _series(ref: DeviceRef) -> str:
    series = _SERIES.get(ref)
    if series is None:
        tags = _tags((("building", ref.building), ("device", ref.device), ("floor", ref.floor), ("grid", ref.grid)))
        series = f"{ref.kind.translate(_MEASUREMENT_ESCAPE)}{tags} "
        if len(_SERIES) > 1_000_000:  # unregistered devices come and go; keep the cache bounded
            _SERIES.clear()
        _SERIES[ref] = series
    return series


def reading_line(reading: Reading) -> bytes | None:
    """One reading as a line; None when it carries no metric (a bare heartbeat: presence only)."""
    values = reading.values
    if not values:
        return None
    parts = []
    for name, value in values.items():
        if value is True:
            parts.append(f"{name}=true")
        elif value is False:
            parts.append(f"{name}=false")
        elif isinstance(value, float):
            parts.append(f"{name}={value!r}")
        else:
            parts.append(f"{name}={_field(value)}")
    return f"{_series(reading.ref)}{','.join(parts)} {reading.ts_ms}".encode()


def alert_line(transition: AlertTransition) -> bytes:
    tags = _tags(
        (
            ("building", transition.building),
            ("device", transition.device),
            ("floor", transition.floor),
            ("grid", transition.grid),
            ("rule", transition.rule),
            ("severity", transition.severity.label),
        )
    )
    fields: dict[str, MetricValue] = {
        "transition": transition.transition,
        "key": transition.key,
        "reason": transition.reason,
        "test": transition.test,
        "flapping": transition.flapping,
    }
    if transition.value is not None:
        fields["value"] = str(transition.value)
    if transition.confirmed is not None:
        fields["confirmed"] = transition.confirmed
    body = ",".join(f"{name}={_field(value)}" for name, value in fields.items())
    return f"alert{tags} {body} {transition.ts_ms}".encode()


# --- HTTP -----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriteResult:
    status: int
    body: str
    retry_after_s: float | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


_LINE_ERRORS = ("unable to parse", "partial write", "type conflict", "dropped=", "beyond retention", "invalid field")


def _about_lines(result: WriteResult) -> bool:
    """Is a 400/422 about the data?  A 400 about the request itself (a bad gzip body, an unknown precision) would
    otherwise dead-letter every line of the spool; that is retried and logged instead, like an outage."""
    if result.status == 422:
        return True
    body = result.body.lower()
    return any(marker in body for marker in _LINE_ERRORS)


class InfluxClient:
    """The HTTP side: one write, one query.  No retries here; the writer decides."""

    def __init__(self, config: InfluxConfig) -> None:
        assert config.url is not None
        self.config = config
        self._session: aiohttp.ClientSession | None = None
        self._headers: dict[str, str] = {"Content-Type": "text/plain; charset=utf-8"}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        token = reveal(config.token)
        self._auth_headers: dict[str, str] = {}
        if token:
            self._auth_headers["Authorization"] = f"Token {token}"
        if config.api == "v2":
            self.write_url = f"{config.url}/api/v2/write"
            self.write_params = {"org": config.org or "", "bucket": config.bucket or "", "precision": "ms"}
        else:
            self.write_url = f"{config.url}/write"
            self.write_params = {"db": config.database, "precision": "ms"}
            if config.retention_policy:
                self.write_params["rp"] = config.retention_policy
        if config.username and "Authorization" not in self._auth_headers:
            basic = base64.b64encode(f"{config.username}:{reveal(config.password) or ''}".encode()).decode()
            self._auth_headers["Authorization"] = f"Basic {basic}"

    async def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                headers=self._auth_headers,
            )
        return self._session

    async def write(self, lines: list[bytes]) -> WriteResult:
        body = b"\n".join(lines)
        if self.config.gzip:
            body = gzip.compress(body, compresslevel=1)
        session = await self._http()
        try:
            async with session.post(
                self.write_url, params=self.write_params, data=body, headers=self._headers
            ) as response:
                text = await response.text()
                return WriteResult(response.status, text[:2000], _retry_after(response.headers.get("Retry-After")))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise InfluxError(f"InfluxDB unreachable: {exc.__class__.__name__}: {exc}") from exc

    async def ping(self) -> bool:
        session = await self._http()
        try:
            async with session.get(f"{self.config.url}/ping") as response:
                return response.status in (200, 204)
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def ensure_database(self, *, retention_days: int) -> str:
        """InfluxDB 1.x: create the database if it is missing, and make its default retention policy keep points
        ``retention_days`` (0: forever).  Idempotent: an existing policy is altered to the configured duration.
        Returns the policy's name."""
        if self.config.api != "v1":
            raise InfluxError("creating the database is for InfluxDB 1.x (api: v1)", retryable=False)
        db = _quote_ident(self.config.database)
        name = self.config.retention_policy or "firegrid"
        rp = _quote_ident(name)
        duration = "INF" if retention_days <= 0 else f"{retention_days}d"
        await self._post_query(f"CREATE DATABASE {db}")
        policies = await self.query(f"SHOW RETENTION POLICIES ON {db}")
        verb = "ALTER" if any(p.get("name") == name for p in policies) else "CREATE"
        await self._post_query(f"{verb} RETENTION POLICY {rp} ON {db} DURATION {duration} REPLICATION 1 DEFAULT")
        return name

    async def _post_query(self, influxql: str) -> None:
        session = await self._http()
        try:
            async with session.post(f"{self.config.url}/query", params={"q": influxql}) as response:
                raw = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise InfluxError(f"InfluxDB unreachable: {exc}") from exc
        if response.status >= 400:
            raise InfluxError(f"{influxql[:60]}: {response.status} {raw[:300]!r}", retryable=response.status >= 500)
        for result in orjson.loads(raw).get("results", []):
            if "error" in result:
                raise InfluxError(f"{influxql[:60]}: {result['error']}", retryable=False)

    async def query(self, influxql: str) -> list[dict[str, Any]]:
        """Run InfluxQL (1.x ``/query``; InfluxDB 2 serves the same endpoint for compatibility).  Rows as dicts, with
        the series' tags merged in, times in epoch ms."""
        params = {"q": influxql, "epoch": "ms", "db": self.config.database}
        if self.config.api == "v2" and self.config.bucket:
            params["db"] = self.config.bucket
        if self.config.retention_policy:
            params["rp"] = self.config.retention_policy
        session = await self._http()
        try:
            async with session.get(f"{self.config.url}/query", params=params) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise InfluxError(
                        f"query failed: {response.status} {raw[:300]!r}",
                        status=response.status,
                        retryable=response.status >= 500,
                    )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise InfluxError(f"InfluxDB unreachable: {exc}") from exc
        document = orjson.loads(raw)
        rows: list[dict[str, Any]] = []
        for result in document.get("results", []):
            if "error" in result:
                raise InfluxError(f"query error: {result['error']}", retryable=False)
            for series in result.get("series", []):
                columns = series["columns"]
                tags = series.get("tags") or {}
                for values in series.get("values", []):
                    row = dict(zip(columns, values, strict=False))
                    row.update(tags)
                    if "name" in series:
                        row.setdefault("_measurement", series["name"])
                    rows.append(row)
        return rows

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _quote_ident(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- dead letters ---------------------------------------------------------------------------------------------------


class DeadLetters:
    """Lines InfluxDB refused (400/422), one row each, so one bad point never blocks or loses a batch."""

    def __init__(self, path: Path) -> None:
        self._db = open_database(path)

    def add(self, line: bytes, *, status: int, error: str) -> None:
        self._db.execute(
            "INSERT INTO gateway_influx_dead_letters (ts_ms, status, error, line) VALUES (?, ?, ?, ?)",
            (int(time.time() * 1000), status, error[:1000], line.decode("utf-8", "replace")),
        )

    def list(self, limit: int = 100) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT id, ts_ms, status, error, line FROM gateway_influx_dead_letters ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [dict(zip(("id", "ts_ms", "status", "error", "line"), row, strict=True)) for row in cursor]

    def close(self) -> None:
        self._db.close()


# --- the writer -----------------------------------------------------------------------------------------------------


class InfluxWriter:
    """Drains the spool into InfluxDB in order.  ``wake()`` after each spool append; ``query()`` for the API."""

    def __init__(
        self,
        *,
        config: InfluxConfig,
        spool: Spool,
        dead_letters: DeadLetters,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.config = config
        self.spool = spool
        self.client = InfluxClient(config)
        self.dead_letters = dead_letters
        self.metrics = metrics
        self._clock = clock
        self._wake = asyncio.Event()
        self._stopping = False
        self._max_backoff_s = max_backoff_s
        self.reachable = True  # last write or ping succeeded
        self.last_error: str | None = None

    def wake(self) -> None:
        self._wake.set()

    async def query(self, influxql: str) -> list[dict[str, Any]]:
        return await self.client.query(influxql)

    async def ping(self) -> bool:
        return await self.client.ping()

    async def run(self) -> None:
        """Forever: write when ``batch_size`` points are pending or the oldest pending one has waited
        ``flush_interval_s`` (alert points go at once).

        ``since`` is when the oldest point not yet written became pending.  Only a write that took everything that
        was pending when it read restarts that clock (what is left then arrived during the write).  A write that
        left older points behind (alert points only, or a batch cut short by ``batch_size``, a segment end or the
        read window) keeps it: restarting it after every write let alert points arriving about once a flush
        interval (the engine's tick raising timed rules after a burst) hold the telemetry tail back for as long as
        they came."""
        since: float | None = None
        while not self._stopping:
            pending = self.spool.pending_points
            now = time.monotonic()
            if pending == 0:
                since = None
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_s)
                continue
            if since is None:
                since = now
            waited = now - since
            if (
                pending >= self.config.batch_size
                or self.spool.streams["alert"].pending_points
                or waited >= self.config.flush_interval_s
            ):
                read_at = time.monotonic()
                batch = await self._flush()
                if self.spool.pending_points == 0:
                    since = None
                elif batch is None:
                    # Nothing readable although points are counted: the spool has corrected its count
                    # (Spool.read); never spin on it.
                    since = time.monotonic()
                elif batch.rest == 0:
                    since = read_at
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.flush_interval_s - waited)

    async def flush_once(self) -> bool:
        """Write one batch from the spool (retrying until it is in); False when the spool was empty."""
        return await self._flush() is not None

    async def _flush(self) -> Batch | None:
        batch = self.spool.read(self.config.batch_size)
        if batch is None:
            return None
        await self._write_batch(batch)
        self.spool.commit(batch)
        self.metrics.spool_committed(batch.points)
        return batch

    async def drain(self, *, timeout_s: float) -> None:
        """On shutdown: write what can be written within ``timeout_s``; the rest stays spooled for next start."""
        self._stopping = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.spool.pending_points:
            try:
                done = await asyncio.wait_for(self.flush_once(), max(0.1, deadline - time.monotonic()))
            except TimeoutError:
                break
            if not done:
                break

    async def _write_batch(self, batch: Batch) -> None:
        attempt = 0
        lines = batch.lines
        while True:
            started = time.perf_counter()
            result: WriteResult | None = None
            try:
                answer = await self.client.write(lines)
            except InfluxError as exc:
                error = str(exc)
                retry_after = None
            else:
                result = answer
                self.metrics.influx_latency(time.perf_counter() - started)
                if result.status < 300:
                    self._ok()
                    return
                error = f"{result.status} {result.body.strip()}"
                retry_after = result.retry_after_s
                if result.status in (400, 422) and _about_lines(result):
                    self._ok()  # InfluxDB answered: it is up; the data is at fault
                    self.metrics.influx_failure("rejected")
                    await self._isolate(lines, status=result.status, body=result.body)
                    return
                if result.status in (400, 401, 403, 404):
                    # misconfiguration (token, database, request format): keep the data, keep trying, shout
                    log.error("InfluxDB refuses writes (%s); points stay in the spool", error)
            self.reachable = False
            self.last_error = error
            self.metrics.influx_failure("unavailable" if result is None else str(result.status))
            delay = min(self._max_backoff_s, 0.2 * 2**attempt) * (0.5 + random.random() / 2)
            if retry_after is not None:
                delay = max(delay, min(retry_after, 300.0))
            if attempt == 0:
                log.info("InfluxDB write failed (%s); spooling and retrying", error)
            attempt += 1
            await asyncio.sleep(delay)

    def _ok(self) -> None:
        if not self.reachable:
            log.info("InfluxDB writes succeed again; draining the spool")
        self.reachable = True
        self.last_error = None

    async def _isolate(self, lines: list[bytes], *, status: int, body: str) -> None:
        """Find the lines InfluxDB refuses by bisection; dead-letter only those."""
        if len(lines) == 1:
            self.dead_letters.add(lines[0], status=status, error=body)
            self.metrics.dead_letter()
            log.warning("InfluxDB refused a point (%s): dead-lettered %r", body.strip()[:200], lines[0][:200])
            return
        middle = len(lines) // 2
        for half in (lines[:middle], lines[middle:]):
            result = await self._write_retrying(half)
            if result.status >= 300:
                await self._isolate(half, status=result.status, body=result.body)

    async def _write_retrying(self, lines: list[bytes]) -> WriteResult:
        attempt = 0
        while True:
            result: WriteResult | None = None
            with contextlib.suppress(InfluxError):
                result = await self.client.write(lines)
            if result is not None and (result.status < 300 or (result.status in (400, 422) and _about_lines(result))):
                return result
            attempt += 1
            delay = min(self._max_backoff_s, 0.2 * 2**attempt) * (0.5 + random.random() / 2)
            if result is not None and result.retry_after_s is not None:
                delay = max(delay, min(result.retry_after_s, 300.0))
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self.client.close()


def readings_lines(readings: Iterable[Reading]) -> list[bytes]:
    return [line for r in readings if (line := reading_line(r)) is not None]


def tags_of(row: Mapping[str, Any]) -> dict[str, Any]:  # pragma: no cover - convenience for the API
    return {k: v for k, v in row.items() if k in ("building", "device", "floor", "grid")}
