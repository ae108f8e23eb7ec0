"""The ``inspections`` section (how the loop behaves) and ``inspection_points`` (what people check).

Here, beside the alert store, because the store, the deadline check and the governance events read them; the gateway's
root config imports them (``gateway.config``) and checks the cross-references (a point's building and device exist).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from alerts.secrets import Secret
from common.config import Section
from common.ids import Ident

PointKind = Literal["extinguisher", "hydrant", "exit", "shop", "generic"]
Interval = Literal["daily", "weekly", "monthly", "quarterly", "yearly"]

DAY_MS = 86_400_000
# Months and quarters as fixed lengths: an overdue deadline must not depend on which month a point was last checked in
# (a check on 31 January is not overdue on 1 March).  Compliance "this month" uses calendar months instead.
INTERVAL_DAYS: dict[str, int] = {"daily": 1, "weekly": 7, "monthly": 31, "quarterly": 92, "yearly": 366}

# What a point of each kind is checked for when its config gives no checklist (GB 25201 and the monthly checks of
# NFPA 10, in the words a shopkeeper understands).
DEFAULT_CHECKLISTS: dict[str, tuple[str, ...]] = {
    "extinguisher": ("压力表指针在绿区", "铅封、保险销完好", "喷管无老化破损", "在检验有效期内", "放置位置无遮挡"),
    "hydrant": ("箱门能正常开启", "水带、水枪齐全", "阀门无锈蚀漏水", "周围无遮挡"),
    "exit": ("疏散通道畅通无堆物", "安全出口门未上锁", "应急照明正常", "疏散指示标志完好"),
    "shop": ("电气线路无私拉乱接", "无违规使用大功率电器", "灭火器配置到位", "疏散通道畅通", "无“三合一”住人"),
    "generic": ("现场无火灾隐患",),
}


class InspectionPoint(Section):
    """One thing a person checks on a schedule: an extinguisher, a hydrant, an exit, a shop."""

    id: Ident
    building: Ident
    floor: int | None = Field(default=None, ge=-20, le=200)
    location: str = Field(default="", max_length=100)
    kind: PointKind = "generic"
    checklist: list[str] = Field(default_factory=list, max_length=30)
    interval: Interval = "monthly"
    responsible: str | None = Field(default=None, max_length=60)
    # A monitored extinguisher (a device of the config): the point counts as inspected while its telemetry is healthy.
    device: Ident | None = None

    @field_validator("checklist")
    @classmethod
    def _items(cls, value: list[str]) -> list[str]:
        for item in value:
            if not item.strip() or len(item) > 100:
                raise ValueError("checklist items must be 1..100 characters")
        return value

    @property
    def items(self) -> tuple[str, ...]:
        return tuple(self.checklist) or DEFAULT_CHECKLISTS[self.kind]

    @property
    def interval_ms(self) -> int:
        return INTERVAL_DAYS[self.interval] * DAY_MS


class InspectionsConfig(Section):
    """How inspections and hazards are run (docs/inspections.md)."""

    # The HMAC key of the QR links: a link lets its holder submit for its own point and no other.  Unset: the mobile
    # pages are closed (404) and ``firegrid qr`` refuses to print.
    secret: Secret | None = None
    # The gateway's address as a phone reaches it, the base of every QR code's URL.
    public_url: str = "http://127.0.0.1:8080"
    grace_days: int = Field(default=3, ge=0, le=90)
    overdue_severity: Literal["warning", "trouble", "supervisory"] = "trouble"
    hazard_overdue_severity: Literal["warning", "trouble", "supervisory"] = "supervisory"
    rectify_days: int = Field(default=7, ge=1, le=365)  # the default deadline a hazard gets when it is assigned
    photo_max_kb: int = Field(default=4096, ge=16, le=20_480)
    photo_max_pixels: int = Field(default=24_000_000, ge=10_000, le=100_000_000)
    check_interval_s: float = Field(default=60.0, gt=0, le=3600)  # how often deadlines are looked at

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _secret_length(self) -> InspectionsConfig:
        if self.secret is not None and len(self.secret.get_secret_value()) < 16:
            raise ValueError("secret: at least 16 characters (it signs every QR link)")
        return self

    @property
    def grace_ms(self) -> int:
        return self.grace_days * DAY_MS

    def secret_value(self) -> str | None:
        secret: SecretStr | None = self.secret
        return None if secret is None else secret.get_secret_value()
