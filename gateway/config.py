"""firegrid configuration: one YAML file, one pydantic model per concern.

* ``extra="forbid"`` everywhere, so a typo in YAML fails loudly and names the key.
* Every key can be overridden by an environment variable ``FIREGRID_<SECTION>__<KEY>`` (``FIREGRID_MQTT__URL``);
  environment wins over the file.
* Secrets (passwords, tokens, webhook secrets, SMS keys) may be given as ``env:NAME`` or ``file:/path``.
* Cross-field checks (a device's building exists, ids are unique) are validators on the root model, and report the
  path of the offending key (``devices[3].building: unknown building 'b9'``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from alerts.config import NotifyConfig
from alerts.dispatch import DispatchPlan, Equipment, Location, Station
from alerts.inspections.config import InspectionPoint, InspectionsConfig
from common.config import Section
from common.errors import ConfigError as ConfigError  # re-exported: gateway callers catch it from here
from common.errors import validation_problems
from common.ids import Ident
from common.yamlio import read_yaml_file
from gateway.secrets import Secret
from rules.model import RuleConfig
from rules.types import DeviceKind


class TlsConfig(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip hostname verification (test benches only)

    @model_validator(mode="after")
    def _cert_and_key(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttConfig(Section):
    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: Secret | None = None
    client_id: Ident = "firegrid-gateway"
    topic_prefix: Ident = "firegrid"
    qos: Literal[0, 1] = 1
    protocol: Literal["v5", "v311"] = "v5"
    session_expiry_s: int = Field(default=86_400, ge=0)
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    shared_group: Ident | None = None
    tls: TlsConfig | None = None
    # How many messages may wait for the group commit that acknowledges them.  Must not exceed the broker's
    # max_inflight_messages (see docs/deploy.md): the broker stops sending when that many are unacknowledged.
    max_inflight: int = Field(default=1000, ge=1, le=65_535)
    # The buildings this gateway owns, when several gateways split a district by building (the unit of all rule and
    # alert state): it subscribes to their topics only and holds only their devices, rules and alerts.  None: every
    # building.  See docs/gateway.md, "Several gateways".
    buildings: list[Ident] | None = Field(default=None, min_length=1)
    # The fast lane: a second persistent session (client id ``<client_id>-events``) for the event channel only, so a
    # detector's ``alarm`` event is never queued by the broker behind this gateway's telemetry backlog.  Off: one
    # session for every channel (the "one-lane build" that `make bench` compares against).  docs/gateway.md.
    event_lane: bool = True

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"scheme must be mqtt:// or mqtts://, got {parts.scheme or 'none'!r}")
        if not parts.hostname:
            raise ValueError("missing host")
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("invalid port") from None
        return value

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def use_tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"


class InfluxConfig(Section):
    url: str | None = None  # None: no InfluxDB, telemetry is kept in the local store only
    api: Literal["v1", "v2"] = "v1"
    database: str = "firegrid"
    retention_policy: str | None = None
    # v1: create the database (and its retention policy, retention.influx_days, named retention_policy or
    # "firegrid") when the gateway starts; off when an administrator manages InfluxDB.
    create_database: bool = False
    org: str | None = None
    bucket: str | None = None
    token: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    batch_size: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    gzip: bool = True
    spool_dir: Path = Path("var/spool")
    spool_max_mb: int = Field(default=512, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _api_fields(self) -> InfluxConfig:
        if self.url and self.api == "v2":
            missing = [name for name in ("org", "bucket", "token") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"api v2 needs {', '.join(missing)}")
        return self


class StoreConfig(Section):
    """``path``: the SQLite store (the default).  ``url``: cluster mode's shared PostgreSQL store
    (``postgresql://user@host:port/db``; a password is better kept out of the file, in ``PGPASSWORD`` or
    ``~/.pgpass``, which libpq reads).  With ``url`` the shared state (alerts, incidents, outbox, presence, engine
    snapshots, inspections) lives there and ``path`` keeps only what is this machine's own: the MQTT filter ledger
    and InfluxDB's dead letters."""

    path: Path = Path("var/firegrid.sqlite")
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// (or postgres://) URL")
        return value

    @property
    def kind(self) -> str:
        return "postgresql" if self.url else "sqlite"


# ``ingest`` can only push telemetry (POST /api/v1/ingest/...): a vendor's gateway holds it, and it reads nothing.
Role = Literal["viewer", "operator", "admin", "ingest"]


class ApiToken(Section):
    name: str
    token: Secret
    role: Role = "viewer"
    grids: list[Ident] | None = None  # None: every grid
    buildings: list[Ident] | None = None  # None: every building


class HttpConfig(Section):
    listen: str = "127.0.0.1:8080"
    tokens: list[ApiToken] = Field(default_factory=list)
    max_body_kb: int = Field(default=64, ge=1, le=10_240)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class GeoPoint(Section):
    """WGS-84 degrees (what a phone's map shows)."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Building(Section):
    id: Ident
    name: str
    grid: Ident
    address: str | None = None
    floors: int = Field(default=1, ge=1, le=200)
    basements: int = Field(default=0, ge=0, le=20)
    location: GeoPoint | None = None  # for the nearest-station choice and the district map


class StationEquipment(Section):
    name: str = Field(min_length=1, max_length=64)
    count: int = Field(default=1, ge=0, le=10_000)


class StationConfig(Section):
    """A micro fire station (微型消防站): where it is, what it covers (buildings, and/or whole grids), its members by
    roster name, and its target from call to on scene."""

    id: Ident
    name: str = Field(min_length=1, max_length=100)
    location: GeoPoint
    grids: list[Ident] = Field(default_factory=list)
    buildings: list[Ident] = Field(default_factory=list)
    members: list[str] = Field(default_factory=list)
    equipment: list[StationEquipment] = Field(default_factory=list)
    on_scene_target_s: int = Field(default=180, ge=30, le=3600)
    leader: str | None = None  # a roster name: paged when the station is late on scene

    @model_validator(mode="after")
    def _covers_something(self) -> StationConfig:
        if not self.grids and not self.buildings:
            raise ValueError("a station needs grids or buildings to cover")
        return self


class DispatchConfig(Section):
    """The "15-minute rescue circle": travel time = straight-line distance / ``travel_speed_kmh``."""

    travel_speed_kmh: float = Field(default=15.0, gt=0, le=200)


class Device(Section):
    id: Ident
    building: Ident
    kind: DeviceKind
    floor: int | None = Field(default=None, ge=-20, le=200)
    location: str | None = None
    heartbeat_s: int | None = Field(default=None, ge=10)


class ContractConfig(Section):
    """How strictly incoming payloads are judged (docs/telemetry.md)."""

    allow_unregistered: bool = True
    max_future_skew_s: int = Field(default=300, ge=0)
    max_age_s: int = Field(default=30 * 86_400, ge=60)  # older samples are rejected as stale
    replay_window_s: int = Field(default=600, ge=0)  # repeated (device, seq) inside it is a duplicate


def _default_heartbeats() -> dict[DeviceKind, int]:
    return {kind: 300 for kind in DeviceKind}


class PresenceConfig(Section):
    """Heartbeat period per device kind; a device may override it with ``heartbeat_s``."""

    heartbeat_s: dict[DeviceKind, int] = Field(default_factory=_default_heartbeats)


class LogConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"


class AclConfig(Section):
    """Broker credentials generated by ``firegrid acl`` (owned by gateway/tools/acl.py; see docs/deploy.md).

    ``device_secret`` set: each device's MQTT password is derived, hex HMAC-SHA256(device_secret, device id) cut to
    32 characters, so a provisioning tool can compute it without a list.  Unset: random passwords are generated
    once and kept in ``credentials.yaml`` beside the password file.
    """

    device_secret: Secret | None = None
    simulator_username: Ident | None = None  # a user that may publish as every device (load tests, drills)
    simulator_password: Secret | None = None


class RetentionConfig(Section):
    """How long records are kept.  GB 50440 asks a monitoring centre to keep alarm and handling records for at least
    a year, so alerts, incidents and their audit trails default to 400 days; the local copy of telemetry (InfluxDB
    holds the real one) and InfluxDB's refused lines are working data and go sooner.  0 keeps a kind forever.
    (Delivered notifications are pruned by the notifier after ``notify.retry.keep_done_s``, 30 days.)"""

    alerts_days: int = Field(default=400, ge=0)  # alerts, their audit trail, incidents and their events
    readings_days: int = Field(default=30, ge=0)  # gateway_readings, the local telemetry kept without InfluxDB
    dead_letters_days: int = Field(default=90, ge=0)  # lines InfluxDB refused
    influx_days: int = Field(default=400, ge=0)  # the retention policy firegrid gives the database it creates
    interval_s: float = Field(default=3600.0, ge=1, le=86_400)  # how often the sweep runs
    batch_rows: int = Field(default=500, ge=1, le=100_000)  # rows per delete transaction

    @model_validator(mode="after")
    def _alerts_at_least_a_year(self) -> RetentionConfig:
        if 0 < self.alerts_days < 365:
            raise ValueError("alerts_days: alarm and handling records must be kept at least 365 days (GB 50440)")
        return self


class UitdPoint(Section):
    """One part of a fire alarm panel, as its UITD addresses it, mapped onto a registered ``panel_point`` device."""

    system_type: int = Field(ge=0, le=255)
    system_address: int = Field(ge=0, le=255)
    part_type: int | None = Field(default=None, ge=0, le=255)  # None: any part type at this address
    part_address: int = Field(ge=0, le=0xFFFF_FFFF)
    device: Ident


class UitdPanel(Section):
    """One UITD (用户信息传输装置) and the building its panel protects."""

    address: int = Field(ge=0, le=(1 << 48) - 1)  # the UITD's 6-byte source address, read low byte first
    building: Ident
    points: list[UitdPoint] = Field(default_factory=list)
    # Parts not in ``points`` report as unregistered panel_point devices named {device_prefix}-{system type}-
    # {system address}-{part address} (accepted while contract.allow_unregistered); off: rejected as unmapped.
    register_parts: bool = False
    device_prefix: Ident | None = None  # default: uitd{address}
    # A UITD on a drill rig or under commissioning: everything it reports is a drill (routed to drill receivers
    # only, never paging the task force).  GB/T 26875.3 frames carry no drill marker of their own.
    drill: bool = False

    @property
    def prefix(self) -> str:
        return self.device_prefix or f"uitd{self.address}"


class UitdConfig(Section):
    """The GB/T 26875.3 listener for fire alarm panels' UITDs (docs/telemetry.md, "UITD panels")."""

    listen: str | None = None  # HOST:PORT; None: no listener
    max_connections: int = Field(default=256, ge=1, le=65_535)
    max_frame_bytes: int = Field(default=1054, ge=30, le=1054)  # 30 + the standard's 1024 bytes of application data
    idle_timeout_s: float = Field(default=120.0, gt=0)  # a UITD sends a heartbeat every 20-30 s
    timezone: str = "Asia/Shanghai"  # the standard's times carry no zone; panels keep local time
    panels: list[UitdPanel] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return value
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def host(self) -> str:
        return (self.listen or "").rpartition(":")[0].strip("[]") or "0.0.0.0"

    @property
    def port(self) -> int:
        return int((self.listen or ":0").rpartition(":")[2])


class PlatformDevice(Section):
    """An IoT platform's device (OneNET device id or IMEI, CTWing deviceId or IMEI) and the firegrid device it is."""

    id: str = Field(min_length=1, max_length=64)
    device: Ident


def _default_onenet_streams() -> dict[str, str]:
    return {"alarm": "alarm", "smoke_alarm": "alarm", "obscuration": "obscuration", "battery": "battery"}


class OneNetConfig(Section):
    """China Mobile OneNET HTTP push (数据推送) to ``POST /api/v1/ingest/onenet`` (docs/telemetry.md)."""

    token: Secret  # the token configured on OneNET's push page: the signature is Base64(MD5(token + nonce + msg))
    devices: list[PlatformDevice] = Field(default_factory=list)
    # OneNET data stream id (ds_id) -> firegrid metric of the device's kind
    datastreams: dict[str, str] = Field(default_factory=_default_onenet_streams)


def _default_ctwing_fields() -> dict[str, str]:
    return {"alarm": "alarm", "smoke_state": "alarm", "obscuration": "obscuration", "battery_value": "battery"}


class CtwingConfig(Section):
    """China Telecom CTWing (AEP) subscription push to ``POST /api/v1/ingest/ctwing`` (docs/telemetry.md)."""

    token: Secret  # sent by the subscription as ``?token=`` on the URL or the ``X-Firegrid-Token`` header
    devices: list[PlatformDevice] = Field(default_factory=list)
    # payload.serviceData field (or event field) -> firegrid metric of the device's kind
    fields: dict[str, str] = Field(default_factory=_default_ctwing_fields)


class IngestConfig(Section):
    """HTTP ingest from IoT platforms; plain HTTP ingest needs only an ``ingest`` token in ``http.tokens``."""

    onenet: OneNetConfig | None = None
    ctwing: CtwingConfig | None = None
    commit_timeout_s: float = Field(default=30.0, gt=0)  # answer 503 if the pipeline has not committed by then


class ClusterConfig(Section):
    """Cluster mode (docs/cluster.md): gateways share one PostgreSQL store and own the broker's building partitions
    through leases.  Timings: a crashed member's partitions move within about ``probe_interval_s`` (its advisory
    lock frees with its session), a hung one's within ``lease_ttl_s`` + ``probe_interval_s``, a stopped one's at once
    (it releases and NOTIFYs)."""

    member: Ident  # this gateway's id in the cluster: unique, and stable across restarts (partitions come back)
    partitions: int = Field(default=256, ge=1, le=4096)  # P: must equal the broker mapping's {{partition(P,1)}}
    lease_ttl_s: float = Field(default=10.0, gt=0, le=600)
    renew_interval_s: float = Field(default=2.0, gt=0)
    probe_interval_s: float = Field(default=1.0, gt=0)
    # The broker's MQTT ack wait (NATS ``mqtt { ack_wait }``), which the deployment must set to this: a failed
    # owner's in-flight messages reach the new owner up to one ack wait after it connects.
    ack_wait_s: float = Field(default=3.0, gt=0, le=60)
    # The broker's nodes (their MQTT listeners): every partition session may connect to any of them and moves to the
    # next when one refuses or drops it.  Empty: ``mqtt.url`` alone.
    brokers: list[str] = Field(default_factory=list)
    # Write one ``cluster_commits`` row per partition for every fenced store transaction (member, partition, epoch,
    # time): the record that proves a fenced-off gateway committed nothing under an old epoch.  For drills and
    # acceptance tests: it costs a write per held partition per transaction.
    audit_commits: bool = False

    @field_validator("brokers")
    @classmethod
    def _brokers(cls, value: list[str]) -> list[str]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                raise ValueError(f"{url!r}: each broker must be an mqtt:// or mqtts:// URL with a host")
        return value

    @model_validator(mode="after")
    def _intervals(self) -> ClusterConfig:
        # Three renewals per TTL: one lost renewal (a GC pause, a slow query) must not cost the leases.
        if self.renew_interval_s > self.lease_ttl_s / 3:
            raise ValueError("renew_interval_s must be at most lease_ttl_s / 3")
        if self.probe_interval_s > self.renew_interval_s:
            raise ValueError("probe_interval_s must be at most renew_interval_s")
        return self


class FiregridConfig(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        env_prefix="FIREGRID_",
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    influx: InfluxConfig = Field(default_factory=InfluxConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    contract: ContractConfig = Field(default_factory=ContractConfig)
    presence: PresenceConfig = Field(default_factory=PresenceConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    buildings: list[Building] = Field(default_factory=list)
    devices: list[Device] = Field(default_factory=list)
    rules: list[RuleConfig] | None = None  # validated by rules.model; cross-rule checks in rules.loader
    rules_file: Path | None = None
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    stations: list[StationConfig] = Field(default_factory=list)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    acl: AclConfig = Field(default_factory=AclConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    inspections: InspectionsConfig = Field(default_factory=InspectionsConfig)
    inspection_points: list[InspectionPoint] = Field(default_factory=list)
    uitd: UitdConfig = Field(default_factory=UitdConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    cluster: ClusterConfig | None = None  # None: one gateway (or a district split by ``mqtt.buildings``)

    # Filled in by load_config: the directory relative paths in the file are resolved against.
    _base_dir: Path = Path(".")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: an operator's FIREGRID_MQTT__URL beats the file.
        return (env_settings, init_settings)

    @model_validator(mode="after")
    def _cross_checks(self) -> FiregridConfig:
        problems: list[str] = []
        building_ids: dict[str, int] = {}
        for i, b in enumerate(self.buildings):
            if b.id in building_ids:
                problems.append(f"buildings[{i}].id: duplicate building {b.id!r}")
            building_ids[b.id] = i
        by_id = {b.id: b for b in self.buildings}
        device_ids: set[str] = set()
        for i, device in enumerate(self.devices):
            if device.id in device_ids:
                problems.append(f"devices[{i}].id: duplicate device {device.id!r}")
            device_ids.add(device.id)
            building = by_id.get(device.building)
            if building is None:
                problems.append(f"devices[{i}].building: unknown building {device.building!r}")
            elif device.floor is not None and not -building.basements <= device.floor <= building.floors:
                problems.append(
                    f"devices[{i}].floor: floor {device.floor} outside building {building.id!r} "
                    f"(-{building.basements}..{building.floors})"
                )
        owned = self.mqtt.buildings or []
        for i, building_id in enumerate(owned):
            if owned.index(building_id) != i:
                problems.append(f"mqtt.buildings[{i}]: duplicate building {building_id!r}")
            elif self.buildings and building_id not in by_id:
                problems.append(f"mqtt.buildings[{i}]: unknown building {building_id!r}")
        if self.rules is not None and self.rules_file is not None:
            problems.append("rules_file: give either an inline 'rules' list or 'rules_file', not both")
        names = [t.name for t in self.http.tokens]
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.append(f"http.tokens[{i}].name: duplicate token name {name!r}")
        for i, token in enumerate(self.http.tokens):
            for j, building_id in enumerate(token.buildings or []):
                if building_id not in by_id:
                    problems.append(f"http.tokens[{i}].buildings[{j}]: unknown building {building_id!r}")
        problems.extend(self._station_problems())
        problems.extend(self._point_problems(by_id))
        problems.extend(self._uitd_problems(by_id))
        problems.extend(self._cluster_problems())
        for name, platform in (("onenet", self.ingest.onenet), ("ctwing", self.ingest.ctwing)):
            for i, mapped in enumerate(platform.devices if platform is not None else []):
                if mapped.device not in device_ids:
                    problems.append(f"ingest.{name}.devices[{i}].device: unknown device {mapped.device!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _station_problems(self) -> list[str]:
        # A station's buildings and grids are not checked against this file's buildings: one district-wide list of
        # stations serves every gateway of a district split by building (``mqtt.buildings``), and a station may
        # cover a neighbour's buildings too.  Its people must be on this roster: they are paged from it.
        problems: list[str] = []
        roster = {m.name for m in self.notify.roster}
        seen: set[str] = set()
        for i, station in enumerate(self.stations):
            if station.id in seen:
                problems.append(f"stations[{i}].id: duplicate station {station.id!r}")
            seen.add(station.id)
            for j, name in enumerate(station.members):
                if name not in roster:
                    problems.append(f"stations[{i}].members[{j}]: unknown roster member {name!r}")
            if station.leader is not None and station.leader not in roster:
                problems.append(f"stations[{i}].leader: unknown roster member {station.leader!r}")
        return problems

    def _cluster_problems(self) -> list[str]:
        if self.cluster is None:
            return []
        problems: list[str] = []
        scheme = urlsplit(self.store.url).scheme if self.store.url else ""
        if scheme not in ("postgresql", "postgres"):
            problems.append("store.url: cluster mode needs a postgresql:// URL (the gateways share one store)")
        if self.mqtt.protocol != "v311":
            problems.append("mqtt.protocol: cluster mode needs v311 (the NATS broker speaks only MQTT 3.1.1)")
        if self.mqtt.buildings is not None:
            problems.append("mqtt.buildings: not with cluster mode (partition leases decide what a gateway owns)")
        if self.mqtt.shared_group is not None:
            problems.append("mqtt.shared_group: not with cluster mode (partition leases decide what a gateway owns)")
        if self.uitd.listen is not None:
            problems.append(
                "uitd.listen: not with cluster mode yet (a panel's alarms would be judged by the member it reached, "
                "not by its building's owner)"
            )
        return problems

    def dispatch_plan(self) -> DispatchPlan:
        """The stations as the alert store's dispatch choice reads them (:mod:`alerts.dispatch`)."""
        return DispatchPlan(
            stations=tuple(
                Station(
                    id=s.id,
                    name=s.name,
                    location=Location(lat=s.location.lat, lon=s.location.lon),
                    grids=tuple(s.grids),
                    buildings=tuple(s.buildings),
                    members=tuple(s.members),
                    equipment=tuple(Equipment(name=e.name, count=e.count) for e in s.equipment),
                    on_scene_target_s=s.on_scene_target_s,
                    leader=s.leader,
                )
                for s in self.stations
            ),
            locations={
                b.id: Location(lat=b.location.lat, lon=b.location.lon) for b in self.buildings if b.location is not None
            },
            travel_speed_kmh=self.dispatch.travel_speed_kmh,
        )

    def _point_problems(self, by_id: dict[str, Building]) -> list[str]:
        problems: list[str] = []
        seen: set[str] = set()
        devices = {d.id: d for d in self.devices}
        for i, point in enumerate(self.inspection_points):
            where = f"inspection_points[{i}]"
            if point.id in seen:
                problems.append(f"{where}.id: duplicate inspection point {point.id!r}")
            seen.add(point.id)
            building = by_id.get(point.building)
            if building is None:
                problems.append(f"{where}.building: unknown building {point.building!r}")
            elif point.floor is not None and not -building.basements <= point.floor <= building.floors:
                problems.append(
                    f"{where}.floor: floor {point.floor} outside building {building.id!r} "
                    f"(-{building.basements}..{building.floors})"
                )
            if point.device is not None:
                device = devices.get(point.device)
                if device is None:
                    problems.append(f"{where}.device: unknown device {point.device!r}")
                elif device.kind != DeviceKind.EXTINGUISHER or point.kind != "extinguisher":
                    problems.append(f"{where}.device: only an extinguisher point can follow a monitored extinguisher")
                elif device.building != point.building:
                    problems.append(f"{where}.device: device {point.device!r} is in building {device.building!r}")
        return problems

    def _uitd_problems(self, by_id: dict[str, Building]) -> list[str]:
        problems: list[str] = []
        devices = {d.id: d for d in self.devices}
        addresses: set[int] = set()
        mapped: set[str] = set()
        for i, panel in enumerate(self.uitd.panels):
            where = f"uitd.panels[{i}]"
            if panel.address in addresses:
                problems.append(f"{where}.address: duplicate UITD address {panel.address}")
            addresses.add(panel.address)
            if panel.building not in by_id:
                problems.append(f"{where}.building: unknown building {panel.building!r}")
            for j, point in enumerate(panel.points):
                device = devices.get(point.device)
                if device is None:
                    problems.append(f"{where}.points[{j}].device: unknown device {point.device!r}")
                elif device.kind is not DeviceKind.PANEL_POINT or device.building != panel.building:
                    problems.append(
                        f"{where}.points[{j}].device: {point.device!r} must be a panel_point of building "
                        f"{panel.building!r}"
                    )
                if point.device in mapped:
                    problems.append(f"{where}.points[{j}].device: {point.device!r} is mapped twice")
                mapped.add(point.device)
        return problems

    def owns(self, building_id: str) -> bool:
        """Whether this gateway judges the building (``mqtt.buildings``; every building when that is unset)."""
        owned: frozenset[str] | None = self.__dict__.get("_owned")
        if owned is None:
            owned = self.__dict__["_owned"] = frozenset(self.mqtt.buildings or ())
        return not owned or building_id in owned

    def owned(self) -> FiregridConfig:
        """The config as this gateway sees it: only the buildings it owns and their devices.  Itself when it owns
        every building (the registry, presence, rules and API are then built from the owned part alone; ``acl`` and
        the simulators keep using the whole district's config)."""
        if not self.mqtt.buildings:
            return self
        part = self.model_copy(
            update={
                "buildings": [b for b in self.buildings if self.owns(b.id)],
                "devices": [d for d in self.devices if self.owns(d.building)],
                "inspection_points": [p for p in self.inspection_points if self.owns(p.building)],
            }
        )
        for cache in ("_bcache", "_dcache", "_owned"):
            part.__dict__.pop(cache, None)  # model_copy copies __dict__, and with it the whole district's caches
        return part

    def building(self, building_id: str) -> Building | None:
        return self._buildings_by_id.get(building_id)

    def device(self, device_id: str) -> Device | None:
        return self._devices_by_id.get(device_id)

    @property
    def _buildings_by_id(self) -> dict[str, Building]:
        cache: dict[str, Building] | None = self.__dict__.get("_bcache")
        if cache is None:
            cache = {b.id: b for b in self.buildings}
            self.__dict__["_bcache"] = cache
        return cache

    @property
    def _devices_by_id(self) -> dict[str, Device]:
        cache: dict[str, Device] | None = self.__dict__.get("_dcache")
        if cache is None:
            cache = {d.id: d for d in self.devices}
            self.__dict__["_dcache"] = cache
        return cache

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    def resolve_path(self, path: Path) -> Path:
        """A path from the config file, relative to the file's directory."""
        return path if path.is_absolute() else self._base_dir / path


def parse_config(data: dict[str, Any], *, base_dir: Path = Path(".")) -> FiregridConfig:
    try:
        config = FiregridConfig(**data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    config._base_dir = base_dir
    return config


def load_config(path: str | os.PathLike[str] | None) -> FiregridConfig:
    """Load and validate a config file (or only defaults and environment when ``path`` is None)."""
    if path is None:
        return parse_config({})
    path = Path(path)
    data = read_yaml_file(path)  # yaml.safe_load's result and errors, in a fraction of its time and memory
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: the top level must be a mapping of sections"])
    return parse_config(data, base_dir=path.parent)


# A config file a command cannot start with is the same kind of mistake as a command line argparse refuses, so every
# ``firegrid`` command reports it the same way: one ``path: message`` line per problem on stderr, exit status 2.
# ``gateway.tools.cli.main`` returns the code of such an exit, so in-process callers (the tests) see a return value.
EXIT_CONFIG = 2


def exit_with_problems(problems: Iterable[str], *, prog: str | None = None) -> NoReturn:
    """Print each problem on its own line on stderr and exit 2.  ``prog`` (``"verify"``) prefixes the first line
    with ``firegrid verify:``, for commands whose other errors carry that prefix too."""
    lines = list(problems)
    if prog is not None and lines:
        lines[0] = f"firegrid {prog}: {lines[0]}"
    for line in lines:
        print(line, file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def load_or_exit(path: str | os.PathLike[str] | None, *, prog: str | None = None) -> FiregridConfig:
    """:func:`load_config`, or :func:`exit_with_problems` with what is wrong with the file."""
    try:
        return load_config(path)
    except ConfigError as exc:
        exit_with_problems(exc.problems, prog=prog)
