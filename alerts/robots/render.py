"""What a group robot says about an incident: one message per incident update (raised, grown, escalated,
acknowledged, dispatched, on scene, resolved), in Chinese or English, as Markdown the three platforms all read.

Pure: an :class:`IncidentUpdate` (what the store knew when the update was queued) and the send time (for the
elapsed time) in, a :class:`RobotMessage` out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

# The lifecycle steps a message reports, in the order an incident goes through them.
STATUSES: Final[tuple[str, ...]] = ("raised", "escalated", "acknowledged", "dispatched", "on_scene", "resolved")

_SEVERITY: Final[dict[str, dict[str, str]]] = {
    "zh": {"fire": "火警", "supervisory": "监管告警", "trouble": "故障", "warning": "预警"},
    "en": {"fire": "FIRE", "supervisory": "Supervisory", "trouble": "Trouble", "warning": "Warning"},
}
_STATUS: Final[dict[str, dict[str, str]]] = {
    "zh": {
        "raised": "待确认",
        "escalated": "无人确认，已升级",
        "acknowledged": "已确认",
        "dispatched": "已出动",
        "on_scene": "已到场",
        "resolved": "已处置完毕",
    },
    "en": {
        "raised": "awaiting acknowledgement",
        "escalated": "unacknowledged, escalated",
        "acknowledged": "acknowledged",
        "dispatched": "dispatched",
        "on_scene": "on scene",
        "resolved": "resolved",
    },
}
_WORDS: Final[dict[str, dict[str, str]]] = {
    "zh": {
        "where": "位置",
        "floor": "层",
        "devices": "报警点",
        "status": "状态",
        "elapsed": "已持续",
        "code": "事件码",
        "by": "处置人",
        "act": "处置",
        "drill": "【演练】",
        "more": "等",
        "count": "处",
        "cause": "原因",
    },
    "en": {
        "where": "Where",
        "floor": "F",
        "devices": "Detectors",
        "status": "Status",
        "elapsed": "Elapsed",
        "code": "Incident code",
        "by": "By",
        "act": "Respond",
        "drill": "[DRILL] ",
        "more": "and more",
        "count": "",
        "cause": "Cause",
    },
}


@dataclass(frozen=True, slots=True)
class IncidentUpdate:
    """One incident update as queued for a robot (the outbox row's body)."""

    status: str  # one of STATUSES
    incident_id: int
    code: str
    building: str
    building_name: str
    severity: str  # label: fire, supervisory, trouble, warning
    floors: tuple[int, ...]
    devices: tuple[str, ...]
    alert_count: int
    opened_ms: int
    tier: int = 0
    drill: bool = False
    by: str | None = None
    cause: str | None = None
    link: str | None = None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {name: getattr(self, name) for name in self.__slots__}
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> IncidentUpdate:
        data: Mapping[str, Any] = orjson.loads(raw)
        return cls(
            status=str(data["status"]),
            incident_id=int(data["incident_id"]),
            code=str(data["code"]),
            building=str(data["building"]),
            building_name=str(data["building_name"]),
            severity=str(data["severity"]),
            floors=tuple(int(f) for f in data.get("floors", ())),
            devices=tuple(str(d) for d in data.get("devices", ())),
            alert_count=int(data.get("alert_count", 1)),
            opened_ms=int(data["opened_ms"]),
            tier=int(data.get("tier", 0)),
            drill=bool(data.get("drill", False)),
            by=data.get("by"),
            cause=data.get("cause"),
            link=data.get("link"),
        )


@dataclass(frozen=True, slots=True)
class RobotMessage:
    msg_id: str
    title: str  # a one-line summary (DingTalk's notification title, Feishu's card header)
    markdown: str
    fire: bool  # severity fire: mention the whole group if the robot is configured to
    link: str | None
    lang: str


def floor_label(floor: int, lang: str) -> str:
    if floor < 0:
        return f"B{-floor}" if lang == "en" else f"地下{-floor}层"
    return f"{floor}F" if lang == "en" else f"{floor}层"


def elapsed_label(ms: int, lang: str) -> str:
    seconds = max(0, ms // 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if lang == "en":
        return f"{hours}h {minutes}m" if hours else f"{minutes}m {seconds:02d}s"
    return f"{hours}小时{minutes}分" if hours else f"{minutes}分{seconds:02d}秒"


def _floors(floors: Sequence[int], lang: str) -> str:
    if not floors:
        return "-"
    return (
        "、".join(floor_label(f, lang) for f in floors)
        if lang == "zh"
        else ", ".join(floor_label(f, lang) for f in floors)
    )


def render(update: IncidentUpdate, *, msg_id: str, lang: str, now_ms: int) -> RobotMessage:
    """The message for ``update`` as sent at ``now_ms`` (the elapsed time is counted to then)."""
    lang = lang if lang in _WORDS else "zh"
    w = _WORDS[lang]
    severity = _SEVERITY[lang].get(update.severity, update.severity)
    status = _STATUS[lang].get(update.status, update.status)
    drill = w["drill"] if update.drill else ""
    where = _floors(update.floors, lang)
    if lang == "zh":
        title = f"{drill}{severity}·{update.building_name} {where}·{status}"
    else:
        title = f"{drill}{severity}: {update.building_name} {where} - {status}"
    devices = ", ".join(update.devices[:5])
    if update.alert_count > len(update.devices[:5]):
        devices += f" {w['more']} {update.alert_count}{w['count']}".rstrip()
    lines = [
        f"### {drill}{severity} · {update.building_name}",
        f"**{w['where']}**: {where}",
        f"**{w['devices']}**: {devices or '-'}",
        f"**{w['status']}**: {status}" + (f" ({update.by})" if update.by else ""),
        f"**{w['elapsed']}**: {elapsed_label(now_ms - update.opened_ms, lang)}",
        f"**{w['code']}**: {update.code}",
    ]
    if update.cause:
        lines.append(f"**{w['cause']}**: {update.cause}")
    if update.link and update.status != "resolved":
        lines.append(f"[{w['act']}]({update.link})")
    return RobotMessage(
        msg_id=msg_id,
        title=title,
        markdown="\n\n".join(lines),
        fire=update.severity == "fire",
        link=update.link,
        lang=lang,
    )
