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
# "link": the recipient's action link (when notify.links is set), for templates that carry one.
Param = Literal["building", "location", "severity", "code", "count", "link"]
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
    """Who is paged at one step of the escalation ladder: by role (within the alert's grid/building) or by name;
    which group robots (``notify.robots`` by name) hear of the incident from this step on; and whether this step
    also phones its members (``voice``: the last rung, for the fire nobody acknowledged)."""

    roles: list[Ident] = Field(default_factory=list)
    members: list[str] = Field(default_factory=list)
    robots: list[Ident] = Field(default_factory=list)
    voice: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> Tier:
        if not self.roles and not self.members and not self.robots:
            raise ValueError("a tier needs roles, members or robots")
        if self.voice and not (self.roles or self.members):
            raise ValueError("a voice tier needs roles or members to call")
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


RobotPlatform = Literal["wecom", "dingtalk", "feishu"]
# Each platform's documented per-robot limit: WeCom and DingTalk 20 messages a minute, Feishu 100 a minute.
ROBOT_PER_MIN: dict[str, int] = {"wecom": 20, "dingtalk": 20, "feishu": 100}


class RobotConfig(Section):
    """A chat group's robot: WeCom group robot, DingTalk custom robot or Feishu/Lark custom bot."""

    name: Ident
    platform: RobotPlatform
    # The credential in the robot's webhook URL: WeCom ``key=``, DingTalk ``access_token=``, Feishu the hook id
    # after ``/bot/v2/hook/``.  Anyone holding it can post to the group: a secret.
    key: Secret
    secret: Secret | None = None  # DingTalk "加签" (SEC...) / Feishu "签名校验" signing secret
    endpoint: str | None = None  # override the platform's base URL (tests, proxies)
    allow_private: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    lang: Lang = "zh"
    per_min: int | None = Field(default=None, ge=1, le=100)  # default: the platform's documented limit
    mention_all: bool = False  # @all on a fire (WeCom text mention, DingTalk isAtAll, Feishu <at id=all>)
    links: bool = True  # carry an action link (when notify.links is configured)
    # An incident that only grows (more detectors, same step, same severity) is told at most once per interval;
    # every step and every rise in severity goes at once.
    update_interval_s: int = Field(default=60, ge=0, le=3600)

    @model_validator(mode="after")
    def _endpoint(self) -> RobotConfig:
        if self.endpoint is not None:
            _check_url(self.endpoint, self.allow_private)
        return self

    @property
    def target(self) -> str:
        return f"robot:{self.name}"

    @property
    def limit_per_min(self) -> int:
        return self.per_min or ROBOT_PER_MIN[self.platform]


def _voice_params() -> list[Param]:
    return ["building", "location", "severity"]


class VoiceTemplate(Section):
    template_id: str  # aliyun TtsCode / tencent TemplateId, approved by the provider
    text: str  # what the approved template reads out, for the docs and the demo
    params: list[Param] = Field(default_factory=_voice_params)


def _default_voice_templates() -> dict[Lang, VoiceTemplate]:
    return {
        "zh": VoiceTemplate(template_id="TTS_0", text="${building}${location}${severity}，请立即处置"),
        "en": VoiceTemplate(template_id="TTS_1", text="${severity} at ${building} ${location}. Respond now"),
    }


class VoiceConfig(Section):
    """The voice tier's provider: a text-to-speech call read out ``play_times`` times; a key press acknowledges."""

    provider: Literal["aliyun", "tencent"]
    endpoint: str | None = None
    allow_private: bool = False
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    access_key_id: str | None = None  # aliyun
    access_key_secret: Secret | None = None
    called_show_number: str | None = None  # aliyun: the caller id (empty: the public number pool)
    secret_id: str | None = None  # tencent
    secret_key: Secret | None = None
    sdk_app_id: str | None = None  # tencent VoiceSdkAppid
    region: str = "ap-guangzhou"
    templates: dict[Lang, VoiceTemplate] = Field(default_factory=_default_voice_templates)
    play_times: int = Field(default=2, ge=1, le=3)  # both providers read a message at most 3 times
    ack_key: str = Field(default="1", pattern=r"^[0-9*#]$")  # the key that acknowledges, announced in the text
    daily_budget: int = Field(default=20, ge=1)  # calls per number per local day (aliyun caps 20 / 24 h)
    receipt_secret: Secret | None = None  # whsec_ secret of the signed result receipts

    @field_validator("receipt_secret")
    @classmethod
    def _whsec(cls, value: Secret | None) -> Secret | None:
        return None if value is None else check_whsec(value)

    @model_validator(mode="after")
    def _provider_fields(self) -> VoiceConfig:
        need = {
            "aliyun": ("access_key_id", "access_key_secret"),
            "tencent": ("secret_id", "secret_key", "sdk_app_id"),
        }[self.provider]
        missing = [name for name in need if getattr(self, name) is None]
        if missing:
            raise ValueError(f"provider {self.provider} needs {', '.join(missing)}")
        if self.endpoint is not None:
            _check_url(self.endpoint, self.allow_private)
        return self


class LinksConfig(Section):
    """Action links in pages: signed for one incident and one recipient, expiring."""

    base_url: str  # how recipients' phones reach this gateway, e.g. https://fire.example.cn
    secret: Secret  # HMAC-SHA256 key of the links (at least 16 characters)
    ttl_s: int = Field(default=12 * 3600, ge=60, le=7 * 86_400)

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: Secret) -> Secret:
        if len(value.get_secret_value()) < 16:
            raise ValueError("secret is too short (at least 16 characters)")
        return value

    @model_validator(mode="after")
    def _url(self) -> LinksConfig:
        _check_url(self.base_url, True)  # the gateway itself: a private address is normal on a community LAN
        return self


class DrillReceiver(Section):
    name: str
    phone: Phone | None = None
    lang: Lang = "zh"


class DrillReceivers(Section):
    """Where drill alerts go instead of the real roster: never page real people for a drill."""

    members: list[DrillReceiver] = Field(default_factory=list)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    robots: list[Ident] = Field(default_factory=list)  # notify.robots (by name) that hear of drills, marked as such


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
    robots: list[RobotConfig] = Field(default_factory=list)
    voice: VoiceConfig | None = None
    links: LinksConfig | None = None
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
        robots = [r.name for r in self.robots]
        for i, name in enumerate(robots):
            if robots.index(name) != i:
                problems.append(f"robots[{i}].name: duplicate robot {name!r}")
        for i, route in enumerate(self.routes):
            for j, tier in enumerate(route.tiers):
                for k, name in enumerate(tier.robots):
                    if name not in robots:
                        problems.append(f"routes[{i}].tiers[{j}].robots[{k}]: unknown robot {name!r}")
                if tier.voice and self.voice is None:
                    problems.append(f"routes[{i}].tiers[{j}].voice: notify.voice is not configured")
                for k, name in enumerate(tier.members):
                    if name not in names:
                        problems.append(f"routes[{i}].tiers[{j}].members[{k}]: unknown member {name!r}")
                for k, role in enumerate(tier.roles):
                    if role not in roles:
                        problems.append(f"routes[{i}].tiers[{j}].roles[{k}]: no roster member has role {role!r}")
        for k, name in enumerate(self.drill_receivers.robots):
            if name not in robots:
                problems.append(f"drill_receivers.robots[{k}]: unknown robot {name!r}")
        if problems:
            raise ValueError("\n".join(problems))
        return self
