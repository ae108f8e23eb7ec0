"""The ``notify`` configuration section: roster, routes, escalation, webhooks, governance platform and SMS.

Owned by the alerts package; the gateway's config composes it.  One model per concern, ``extra="forbid"``
everywhere so that a typo fails loudly with its path.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from datetime import time
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, StringConstraints, field_validator, model_validator

from alerts.secrets import Secret
from common.config import Section
from common.ids import Ident

Phone = Annotated[str, StringConstraints(pattern=r"^\+[1-9][0-9]{6,14}$")]  # E.164
SeverityName = Literal["warning", "trouble", "supervisory", "fire"]
Lang = Literal["zh", "en"]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Param = Literal["building", "location", "severity", "code", "count"]
DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EVENT_TYPES = (
    "alert.raised",
    "alert.updated",
    "alert.acknowledged",
    "alert.dispatched",
    "alert.escalated",
    "alert.cleared",
    "alert.resolved",
    "incident.opened",
    "incident.updated",
    "incident.acknowledged",
    "incident.dispatched",
    "incident.on_scene",
    "incident.escalated",
    "incident.resolved",
)


def _timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {value!r}") from None
    return value


def is_private_host(host: str) -> bool:
    """Loopback, private, link-local and similar addresses (a literal IP or ``localhost``)."""
    host = host.rstrip(".")  # "localhost." is the same name as "localhost" (a fully qualified trailing dot)
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return is_private_address(address)


def is_private_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _check_url(url: str, allow_private: bool) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    if not allow_private and is_private_host(parts.hostname):
        raise ValueError(
            f"url {url!r} points at a loopback, private or link-local address; set allow_private: true to allow it"
        )


def check_whsec(value: SecretStr) -> SecretStr:
    raw = value.get_secret_value()
    if not raw.startswith("whsec_"):
        raise ValueError("secret must have the form whsec_<base64>")
    try:
        key = base64.b64decode(raw[6:], validate=True)
    except ValueError:
        raise ValueError("secret must have the form whsec_<base64> (invalid base64)") from None
    if len(key) < 16:
        raise ValueError("secret is too short (at least 16 bytes of key)")
    return value


class OnDuty(Section):
    """One recurring on-duty window in the roster's local time; ``end`` before ``start`` spans midnight."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS))
    start: time = time(0, 0)
    end: time = time(23, 59, 59)


class Member(Section):
    name: str = Field(min_length=1, max_length=64)
    phone: Phone
    role: Ident  # e.g. grid_worker, volunteer, station_leader, duty_officer
    grids: list[Ident] = Field(default_factory=list)  # empty: every grid
    buildings: list[Ident] = Field(default_factory=list)  # empty: every building of its grids
    lang: Lang = "zh"
    on_duty: list[OnDuty] = Field(default_factory=list)  # empty: always on duty
    timezone: str | None = None  # default: notify.timezone

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str | None) -> str | None:
        return None if value is None else _timezone(value)


class Tier(Section):
    """Who is paged at one step of the escalation ladder: by role (within the alert's grid/building) or by name."""

    roles: list[Ident] = Field(default_factory=list)
    members: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> Tier:
        if not self.roles and not self.members:
            raise ValueError("a tier needs roles or members")
        return self


class Route(Section):
    name: Ident
    min_severity: SeverityName = "fire"
    grids: list[Ident] = Field(default_factory=list)  # empty: every grid
    buildings: list[Ident] = Field(default_factory=list)  # empty: every building
    tiers: list[Tier] = Field(min_length=1)  # tiers[0] is paged at once, tiers[n] after n * ack_timeout_s
    # This route's own ack timeout.  Below fire, an alert escalates only when a matching route sets one (e.g. a
    # supervisory route: an extinguisher missing or obstructed, on a longer timeout than fire's).
    ack_timeout_s: float | None = Field(default=None, gt=0)


def _default_events() -> list[str]:
    return ["*"]


class WebhookConfig(Section):
    name: Ident | None = None
    url: str
    secret: Secret  # Standard Webhooks secret: whsec_<base64>
    events: list[str] = Field(default_factory=_default_events)  # patterns: "alert.*", "incident.opened", "*"
    min_severity: SeverityName = "warning"
    allow_private: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: Secret) -> Secret:
        return check_whsec(value)

    @field_validator("events")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if not re.fullmatch(r"[a-z.*]+", pattern):
                raise ValueError(f"invalid event pattern {pattern!r}")
        return value

    @model_validator(mode="after")
    def _url(self) -> WebhookConfig:
        _check_url(self.url, self.allow_private)
        return self

    @property
    def label(self) -> str:
        return self.name or urlsplit(self.url).netloc


class GovernanceConfig(Section):
    """The grid-governance platform: receives every lifecycle step of every alert as a signed webhook."""

    url: str
    secret: Secret
    allow_private: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    include_drills: bool = False

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: Secret) -> Secret:
        return check_whsec(value)

    @model_validator(mode="after")
    def _url(self) -> GovernanceConfig:
        _check_url(self.url, self.allow_private)
        return self


def _default_params() -> list[Param]:
    return ["building", "location", "severity", "code"]


class SmsTemplate(Section):
    template_id: str | None = None  # aliyun TemplateCode / tencent TemplateId
    text: str  # rendered for twilio/http; documents the provider template for aliyun/tencent
    # Order of the parameters for providers with positional templates (tencent {1}, {2} ...).
    params: list[Param] = Field(default_factory=_default_params)


def _default_templates() -> dict[Lang, SmsTemplate]:
    return {
        "zh": SmsTemplate(text="【消防告警】{building}{location}{severity}，共{count}处，回复{code}确认"),
        "en": SmsTemplate(text="FIRE ALERT {severity}: {building} {location} ({count}). Reply {code} to acknowledge"),
    }


class SmsRateLimits(Section):
    per_recipient_per_min: int = Field(default=6, ge=1)
    global_per_min: int = Field(default=120, ge=1)


class HttpSmsConfig(Section):
    """A templated request for any other SMS gateway: ``{phone}``, ``{text}``, ``{code}`` and the template params
    are substituted into the body (JSON-escaped when ``content_type`` is JSON) and headers."""

    method: Literal["POST", "PUT"] = "POST"
    content_type: str = "application/json"
    body: str = '{"to": "{phone}", "text": "{text}"}'
    headers: dict[str, str] = Field(default_factory=dict)
    token: Secret | None = None  # sent as "Authorization: Bearer <token>"
    hmac_secret: Secret | None = None  # if set: X-Signature: hex HMAC-SHA256 of "<X-Timestamp>.<body>"


class SmsConfig(Section):
    provider: Literal["aliyun", "tencent", "twilio", "http"]
    endpoint: str | None = None  # override the provider's URL (tests, proxies)
    allow_private: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    # aliyun: access_key_id/access_key_secret, sign_name; tencent: secret_id/secret_key, sdk_app_id, sign_name,
    # region; twilio: account_sid/auth_token, from_number or messaging_service_sid; http: see HttpSmsConfig.
    access_key_id: str | None = None
    access_key_secret: Secret | None = None
    secret_id: str | None = None
    secret_key: Secret | None = None
    sdk_app_id: str | None = None
    region: str = "ap-guangzhou"
    sign_name: str | None = None
    account_sid: str | None = None
    auth_token: Secret | None = None
    from_number: str | None = None
    messaging_service_sid: str | None = None
    http: HttpSmsConfig | None = None
    templates: dict[Lang, SmsTemplate] = Field(default_factory=_default_templates)
    rate: SmsRateLimits = Field(default_factory=SmsRateLimits)
    daily_budget: int = Field(default=50, ge=1)  # per number per local day (mainland providers cap near 50)
    budget_warning: int | None = Field(default=None, ge=1)  # default: 80 % of daily_budget
    update_interval_s: int = Field(default=300, ge=1)  # at most one SMS per (incident, recipient) per interval
    inbound_secret: Secret | None = None  # whsec_ secret for signed generic inbound replies

    @model_validator(mode="after")
    def _provider_fields(self) -> SmsConfig:
        need = {
            "aliyun": ("access_key_id", "access_key_secret", "sign_name"),
            "tencent": ("secret_id", "secret_key", "sdk_app_id", "sign_name"),
            "twilio": ("account_sid", "auth_token"),
            "http": ("endpoint", "http"),
        }[self.provider]
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"provider {self.provider} needs {', '.join(missing)}")
        if self.provider == "twilio" and not (self.from_number or self.messaging_service_sid):
            raise ValueError("provider twilio needs from_number or messaging_service_sid")
        if self.provider in ("aliyun", "tencent"):
            for lang, template in self.templates.items():
                if not template.template_id:
                    raise ValueError(f"templates.{lang}.template_id is required for provider {self.provider}")
        if self.endpoint is not None:
            _check_url(self.endpoint, self.allow_private)
        return self

    @property
    def warn_at(self) -> int:
        return self.budget_warning or max(1, (self.daily_budget * 4) // 5)


class DrillReceiver(Section):
    name: str
    phone: Phone | None = None
    lang: Lang = "zh"


class DrillReceivers(Section):
    """Where drill alerts go instead of the real roster: never page real people for a drill."""

    members: list[DrillReceiver] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)


class RetryConfig(Section):
    base_s: float = Field(default=1.0, gt=0)  # first retry after about base_s, doubling, with full jitter
    max_s: float = Field(default=300.0, gt=0)
    max_retry_after_s: float = Field(default=3600.0, gt=0)
    give_up_after_s: int = Field(default=86_400, ge=60)  # a notification older than this is dead-lettered
    keep_done_s: int = Field(default=30 * 86_400, ge=3600)  # finished outbox rows are pruned after this


class NotifyConfig(Section):
    timezone: str = "Asia/Shanghai"
    roster: list[Member] = Field(default_factory=list)
    routes: list[Route] = Field(default_factory=list)
    ack_timeout_s: float = Field(default=60.0, gt=0)
    group_window_s: float = Field(default=300.0, ge=0)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    governance: GovernanceConfig | None = None
    sms: SmsConfig | None = None
    drill_receivers: DrillReceivers = Field(default_factory=DrillReceivers)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    workers: int = Field(default=4, ge=1, le=64)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return _timezone(value)

    @model_validator(mode="after")
    def _cross_checks(self) -> NotifyConfig:
        problems: list[str] = []
        names = [m.name for m in self.roster]
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.append(f"roster[{i}].name: duplicate member {name!r}")
        roles = {m.role for m in self.roster}
        for i, route in enumerate(self.routes):
            for j, tier in enumerate(route.tiers):
                for k, name in enumerate(tier.members):
                    if name not in names:
                        problems.append(f"routes[{i}].tiers[{j}].members[{k}]: unknown member {name!r}")
                for k, role in enumerate(tier.roles):
                    if role not in roles:
                        problems.append(f"routes[{i}].tiers[{j}].roles[{k}]: no roster member has role {role!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self
