"""Prometheus metrics of the gateway, in a private registry (several gateways can live in one test process)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_in = Counter(
            "firegrid_mqtt_messages", "MQTT messages received, by channel", ["channel"], registry=r
        )
        self.readings = Counter("firegrid_readings", "readings accepted and handed off", registry=r)
        self.source_messages = Counter(
            "firegrid_source_messages",
            "messages from sources other than MQTT (uitd, onenet, ctwing, http), handed to the pipeline",
            ["source"],
            registry=r,
        )
        self.uitd_frames = Counter(
            "firegrid_uitd_frames", "GB/T 26875.3 frames received, by command", ["command"], registry=r
        )
        self.uitd_connections = Gauge("firegrid_uitd_connections", "UITD TCP connections open", registry=r)
        self.rejections = Counter(
            "firegrid_rejections", "messages rejected by the telemetry contract, by reason", ["reason"], registry=r
        )
        self.clock_skew = Counter(
            "firegrid_clock_skew", "samples whose timestamp was in the future (receipt time used)", registry=r
        )
        self.acks = Counter("firegrid_mqtt_acks", "messages acknowledged to the broker after hand-off", registry=r)
        self.commits = Counter("firegrid_group_commits", "group commits (spool + alert store)", registry=r)
        self.commit_seconds = Histogram(
            "firegrid_group_commit_seconds",
            "time to make one group commit durable",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
            registry=r,
        )
        self.engine_errors = Counter(
            "firegrid_engine_errors", "inputs the rules engine failed on (logged with a traceback)", registry=r
        )
        self.reconnects = Counter("firegrid_mqtt_reconnects", "MQTT (re)connections after the first", registry=r)
        self.mqtt_connected = Gauge("firegrid_mqtt_connected", "1 while connected to the broker", registry=r)
        self.transitions = Counter(
            "firegrid_alert_transitions", "alert transitions from the engine", ["transition", "severity"], registry=r
        )
        self.lag = Histogram(
            "firegrid_end_to_end_lag_seconds",
            "device timestamp to durable hand-off",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=r,
        )
        self.influx_write_seconds = Histogram(
            "firegrid_influx_write_seconds", "InfluxDB write request latency", registry=r
        )
        self.influx_failures = Counter(
            "firegrid_influx_write_failures", "failed InfluxDB writes, by status", ["status"], registry=r
        )
        self.influx_points = Counter("firegrid_influx_points", "points written to InfluxDB", registry=r)
        self.dead_letters = Counter("firegrid_influx_dead_letters", "points InfluxDB refused (400/422)", registry=r)
        self.inspection_refusals = Counter(
            "firegrid_inspection_refusals",
            "mobile-page and photo submissions refused, by reason (photo, form, token, point)",
            ["reason"],
            registry=r,
        )
        self.spool_dropped = Counter(
            "firegrid_spool_dropped_points",
            "oldest telemetry points dropped to keep the spool under its cap",
            registry=r,
        )
        # cluster mode (docs/cluster.md, "Partition sessions")
        self.unmapped = Counter(
            "firegrid_unmapped",
            "publishes that escaped the broker's partition mapping, re-published into their partition",
            registry=r,
        )
        self.partition_sessions = Gauge(
            "firegrid_partition_sessions", "partition sessions this gateway has open", registry=r
        )
        self._spool_source: Callable[[], tuple[int, int, int | None]] | None = None
        r.register(_SpoolCollector(self))

    def set_spool_source(self, source: Callable[[], tuple[int, int, int | None]]) -> None:
        """``source() -> (pending points, bytes, oldest pending timestamp ms)``."""
        self._spool_source = source

    def reject(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def influx_latency(self, seconds: float) -> None:
        self.influx_write_seconds.observe(seconds)

    def influx_failure(self, status: str) -> None:
        self.influx_failures.labels(status).inc()

    def dead_letter(self) -> None:
        self.dead_letters.inc()

    def spool_committed(self, points: int) -> None:
        self.influx_points.inc(points)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SpoolCollector:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> list[GaugeMetricFamily]:
        source = self._metrics._spool_source
        depth = GaugeMetricFamily("firegrid_spool_depth_points", "points waiting in the spool for InfluxDB")
        size = GaugeMetricFamily("firegrid_spool_bytes", "bytes in the spool")
        age = GaugeMetricFamily("firegrid_spool_age_seconds", "age of the oldest point waiting in the spool")
        if source is not None:
            points, nbytes, oldest = source()
            depth.add_metric([], points)
            size.add_metric([], nbytes)
            age.add_metric([], 0.0 if oldest is None or not points else max(0.0, time.time() - oldest / 1000))
        return [depth, size, age]
