"""Why an alert was raised, said in Chinese and in English, from its machine fields.

The engine writes one plain reason string per transition (English, for logs and webhooks, which keep it as it is).
The duty room reads Chinese first: this module renders the same facts (the rule's kind, its thresholds and periods,
the alert's value and floor) through one template per rule kind and language, so a reason never mixes a Chinese
screen with an English sentence.  Pure: a rule config and the alert's fields in, text out.

Rule names: the shipped rules (``rules/defaults.yaml``) have a name per language here; an operator's own rule is
named by its ``description`` (a name written in Chinese is used as is in both languages) or, in Chinese, by what it
watches (the metric's Chinese name), never by an English description under a Chinese interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from rules.model import RuleConfig
from rules.types import MetricValue

Lang = Literal["zh", "en"]
LANGS: Final[tuple[Lang, ...]] = ("zh", "en")

# The shipped rules' names.  A test checks that every rule of rules/defaults.yaml is named in every language.
RULE_NAMES: Final[Mapping[Lang, Mapping[str, str]]] = {
    "zh": {
        "smoke-obscuration": "烟雾浓度超标",
        "smoke-detector-alarm": "烟感探测器报警",
        "heat-fixed": "温度超过定温",
        "heat-rate-of-rise": "温度快速上升",
        "call-point-pressed": "手动报警按钮被按下",
        "fire-confirmed": "确认火警",
        "extinguisher-missing": "灭火器不在挂架上",
        "extinguisher-obstructed": "灭火器被遮挡",
        "extinguisher-pressure": "灭火器压力异常",
        "battery-low": "电池电量低",
        "tamper": "设备被拆动",
        "tamper-event": "设备上报被拆动",
        "device-fault": "设备故障",
        "device-absent": "设备未上报",
        "repeated-false-alarms": "同一探测器反复报警",
        "flapping": "告警频繁变化",
        "panel-fire-alarm": "火灾报警控制器部件火警",
        "panel-supervisory": "火灾报警控制器部件监管报警",
        "panel-fault": "火灾报警控制器部件故障",
        "panel-power-fault": "火灾报警控制器部件电源故障",
    },
    "en": {
        "smoke-obscuration": "Smoke obscuration",
        "smoke-detector-alarm": "Smoke detector in alarm",
        "heat-fixed": "Heat above fixed temperature",
        "heat-rate-of-rise": "Heat rate of rise",
        "call-point-pressed": "Manual call point pressed",
        "fire-confirmed": "Confirmed fire",
        "extinguisher-missing": "Extinguisher not on its bracket",
        "extinguisher-obstructed": "Extinguisher obstructed",
        "extinguisher-pressure": "Extinguisher pressure out of range",
        "battery-low": "Battery low",
        "tamper": "Device tampered with",
        "tamper-event": "Tamper reported",
        "device-fault": "Device fault",
        "device-absent": "Device not reporting",
        "repeated-false-alarms": "Repeated alarms from one detector",
        "flapping": "Flapping alert",
        "panel-fire-alarm": "Fire alarm panel point in alarm",
        "panel-supervisory": "Fire alarm panel point supervisory",
        "panel-fault": "Fire alarm panel point fault",
        "panel-power-fault": "Fire alarm panel point power fault",
    },
}

# What a metric is called and its unit, per language (a metric not listed keeps its own name).
METRICS: Final[Mapping[Lang, Mapping[str, tuple[str, str]]]] = {
    "zh": {
        "obscuration": ("烟雾浓度", " %/m"),
        "celsius": ("温度", " °C"),
        "pressure_mpa": ("压力", " MPa"),
        "battery": ("电量", "%"),
        "alarm": ("报警状态", ""),
        "present": ("在位状态", ""),
        "obstructed": ("遮挡状态", ""),
        "tamper": ("防拆状态", ""),
        "rssi": ("信号强度", " dBm"),
        "fire_alarm": ("火警状态", ""),
        "part_fault": ("故障状态", ""),
        "supervisory": ("监管状态", ""),
        "power_fault": ("电源故障状态", ""),
    },
    "en": {
        "obscuration": ("obscuration", " %/m"),
        "celsius": ("temperature", " °C"),
        "pressure_mpa": ("pressure", " MPa"),
        "battery": ("battery", "%"),
        "alarm": ("alarm", ""),
        "present": ("present", ""),
        "obstructed": ("obstructed", ""),
        "tamper": ("tamper", ""),
        "rssi": ("signal", " dBm"),
        "fire_alarm": ("fire alarm", ""),
        "part_fault": ("fault", ""),
        "supervisory": ("supervisory", ""),
        "power_fault": ("power fault", ""),
    },
}

# One template per rule kind (and per variant of it) and language.  Placeholders: name, metric, value, unit, limit,
# lo, hi, held, rate, window, n, where, offline, factor.  ``held`` and ``where`` are rendered pieces (may be empty).
TEMPLATES: Final[Mapping[Lang, Mapping[str, str]]] = {
    "zh": {
        "threshold.above": "{name}：{metric}{value}，达到或超过 {limit}{unit}{held}",
        "threshold.below": "{name}：{metric}{value}，低于或等于 {limit}{unit}{held}",
        "threshold.outside": "{name}：{metric}{value}，超出正常范围 {lo}–{hi}{unit}{held}",
        "state": "{name}{held}",
        "rate_of_rise": "{name}：{metric}在 {window}内每分钟上升 {rate}{unit} 以上",
        "event": "{name}",
        "absence.offline": "{name}：设备离线已超过 {offline}",
        "absence.silent": "{name}：超过心跳周期 {factor} 倍未上报数据",
        "correlate": "{name}：{where}{n} 个探测器在 {window}内相继报警",
        "count": "{name}：{window}内报警 {n} 次",
        "flapping": "（告警在 {window}内频繁变化，保持告警状态）",
        "held": "，持续 {duration}",
        "held.state": "（持续 {duration}）",
        "where.floor": "{floor}有 ",
        "where.building": "同一楼栋有 ",
        "unnamed": "{metric}告警",
    },
    "en": {
        "threshold.above": "{name}: {metric}{value}, at or above {limit}{unit}{held}",
        "threshold.below": "{name}: {metric}{value}, at or below {limit}{unit}{held}",
        "threshold.outside": "{name}: {metric}{value}, outside the normal {lo}–{hi}{unit}{held}",
        "state": "{name}{held}",
        "rate_of_rise": "{name}: {metric} rising {rate}{unit} a minute or faster over {window}",
        "event": "{name}",
        "absence.offline": "{name}: offline for more than {offline}",
        "absence.silent": "{name}: silent for more than {factor} times its heartbeat",
        "correlate": "{name}: {n} detectors in alarm {where}within {window}",
        "count": "{name}: raised {n} times within {window}",
        "flapping": " (changing back and forth within {window}: held active)",
        "held": " for {duration}",
        "held.state": " for {duration}",
        "where.floor": "on {floor} ",
        "where.building": "in one building ",
        "unnamed": "{metric} alert",
    },
}

# The template keys each rule kind renders with (a test checks that every shipped kind has all of its keys).
KIND_TEMPLATES: Final[Mapping[str, tuple[str, ...]]] = {
    "threshold": ("threshold.above", "threshold.below", "threshold.outside", "held"),
    "state": ("state", "held.state"),
    "rate_of_rise": ("rate_of_rise",),
    "event": ("event",),
    "absence": ("absence.offline", "absence.silent"),
    "correlate": ("correlate", "where.floor", "where.building"),
    "count": ("count",),
    "flapping": ("flapping",),
}

DEFAULT_FLAP_WINDOW_MS = 600_000


@dataclass(frozen=True, slots=True)
class AlertFacts:
    """The machine fields of one alert a reason is rendered from."""

    rule: str
    value: MetricValue | None = None
    floor: int | None = None
    flapping: bool = False


def localized_reasons(
    rule: RuleConfig | None, facts: AlertFacts, *, flap_window_ms: int = DEFAULT_FLAP_WINDOW_MS
) -> dict[Lang, str]:
    """The reason in every language, ``{"zh": ..., "en": ...}``."""
    return {lang: localized_reason(rule, facts, lang=lang, flap_window_ms=flap_window_ms) for lang in LANGS}


def localized_reason(
    rule: RuleConfig | None, facts: AlertFacts, *, lang: Lang, flap_window_ms: int = DEFAULT_FLAP_WINDOW_MS
) -> str:
    """The reason in one language.  ``rule`` is the alert's rule as configured (None when it is no longer in the
    config: the alert is then named by its rule id's shipped name, or its metric)."""
    tpl = TEMPLATES[lang]
    name = rule_name(rule, facts.rule, lang=lang)
    text = name
    if rule is not None:
        text = _by_kind(rule, facts, lang=lang, name=name)
    if facts.flapping:
        text += tpl["flapping"].format(window=duration(flap_window_ms, lang=lang))
    return text


def rule_name(rule: RuleConfig | None, rule_id: str, *, lang: Lang) -> str:
    shipped = RULE_NAMES[lang].get(rule_id)
    if shipped is not None:
        return shipped
    description = rule.description if rule is not None else None
    if description and (lang == "en" or _has_cjk(description)):
        return description
    metric = (rule.metric if rule is not None else None) or ""
    if lang == "en":
        return rule_id
    return TEMPLATES[lang]["unnamed"].format(metric=METRICS[lang].get(metric, (metric or "设备", ""))[0])


def duration(ms: int | float, *, lang: Lang) -> str:
    """A period the way people say it: ``30 秒`` / ``2 分钟`` / ``24 小时`` (``30 s`` / ``2 min`` / ``24 h``)."""
    seconds = ms / 1000
    units = ((3600, " 小时"), (60, " 分钟"), (1, " 秒")) if lang == "zh" else ((3600, " h"), (60, " min"), (1, " s"))
    for size, unit in units:
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}{units[-1][1]}"


def floor_text(floor: int, *, lang: Lang) -> str:
    if lang == "zh":
        return f"地下{-floor}层" if floor < 0 else f"{floor}层"
    return f"basement {-floor}" if floor < 0 else f"floor {floor}"


def _by_kind(rule: RuleConfig, facts: AlertFacts, *, lang: Lang, name: str) -> str:
    tpl = TEMPLATES[lang]
    metric_name, unit = METRICS[lang].get(rule.metric or "", (rule.metric or "", ""))
    kind = rule.kind
    if kind == "threshold":
        held = tpl["held"].format(duration=duration(rule.for_ms, lang=lang)) if rule.for_ms else ""
        value = _number(facts.value)
        shown = f" {value}{unit}" if value is not None else ""
        args = {"name": name, "metric": metric_name, "value": shown, "unit": unit, "held": held}
        if rule.above is not None:
            return tpl["threshold.above"].format(limit=f"{rule.above:g}", **args)
        if rule.below is not None:
            return tpl["threshold.below"].format(limit=f"{rule.below:g}", **args)
        lo, hi = rule.outside if rule.outside is not None else (0.0, 0.0)
        return tpl["threshold.outside"].format(lo=f"{lo:g}", hi=f"{hi:g}", **args)
    if kind == "state":
        held = tpl["held.state"].format(duration=duration(rule.for_ms, lang=lang)) if rule.for_ms else ""
        return tpl["state"].format(name=name, held=held)
    if kind == "rate_of_rise":
        window = duration(rule.window_ms or 60_000, lang=lang)
        return tpl["rate_of_rise"].format(
            name=name, metric=metric_name, rate=f"{rule.rate_per_min or 0:g}", unit=unit, window=window
        )
    if kind == "absence":
        if facts.value == "offline" and rule.offline_for_ms is not None:
            return tpl["absence.offline"].format(name=name, offline=duration(rule.offline_for_ms, lang=lang))
        return tpl["absence.silent"].format(name=name, factor=f"{rule.heartbeat_factor:g}")
    if kind == "correlate":
        if rule.scope == "floor" and facts.floor is not None:
            where = tpl["where.floor"].format(floor=floor_text(facts.floor, lang=lang))
        else:
            where = tpl["where.building"]
        n = _count(facts.value, default=rule.min_devices)
        return tpl["correlate"].format(name=name, where=where, n=n, window=duration(rule.window_ms or 0, lang=lang))
    if kind == "count":
        n = _count(facts.value, default=rule.count or 0)
        return tpl["count"].format(name=name, n=n, window=duration(rule.window_ms or 0, lang=lang))
    return tpl["event"].format(name=name)


def _number(value: MetricValue | None) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return f"{value:g}"


def _count(value: MetricValue | None, *, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, float) and value.is_integer() and value > 0:
        return int(value)
    return default


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)
