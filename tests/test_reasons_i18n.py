"""Reasons in Chinese and in English: every shipped rule reads naturally in both, and the API serves both beside the
engine's own text.

The Chinese check is strict: once the units (MPa, %/m, °C) are taken out, a Chinese reason holds no Latin letter at
all, so neither an English rule description nor an English word of a template can slip under a Chinese interface.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.api import create_api_app
from rules.loader import DEFAULTS_PATH, read_rules_file
from rules.model import RuleConfig
from rules.reasons import KIND_TEMPLATES, LANGS, RULE_NAMES, TEMPLATES, AlertFacts, localized_reason, localized_reasons
from testkit.api import build_runtime, config_for_tests, inject, now_ms

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"
VIEWER = {"Authorization": "Bearer demo-viewer-token"}
SHIPPED = read_rules_file(DEFAULTS_PATH, label="rules/defaults.yaml: ")
UNITS = re.compile(r"MPa|%/m|°C|dBm")
LATIN = re.compile(r"[A-Za-z]")
CJK = re.compile(r"[\u4e00-\u9fff]")
# Values an alert of each kind may carry: a number, a state, the absence rule's "offline"/"silent", a count, none.
VALUES: tuple[Any, ...] = (8.2, 0.6, True, False, "offline", "silent", 3, None)


def untranslated_in_zh(text: str) -> list[str]:
    return LATIN.findall(UNITS.sub("", text))


def test_every_shipped_rule_kind_has_its_templates_in_both_languages() -> None:
    kinds = {rule.kind for rule in SHIPPED}
    assert kinds >= {"threshold", "state", "rate_of_rise", "event", "correlate", "count", "absence", "flapping"}
    for lang in LANGS:
        for kind in kinds:
            assert kind in KIND_TEMPLATES, kind
            for key in KIND_TEMPLATES[kind]:
                assert TEMPLATES[lang].get(key), (lang, kind, key)
    # the two languages fill the same placeholders
    for key in TEMPLATES["zh"]:
        zh = set(re.findall(r"{(\w+)}", TEMPLATES["zh"][key]))
        en = set(re.findall(r"{(\w+)}", TEMPLATES["en"][key]))
        assert zh == en, key


def test_every_shipped_rule_is_named_in_both_languages() -> None:
    for rule in SHIPPED:
        for lang in LANGS:
            assert RULE_NAMES[lang].get(rule.id), (lang, rule.id)


@pytest.mark.parametrize("rule", SHIPPED, ids=lambda r: r.id)
def test_no_shipped_reason_is_untranslated(rule: RuleConfig) -> None:
    for value in VALUES:
        for flapping in (False, True):
            for floor in (3, -1, None):
                facts = AlertFacts(rule=rule.id, value=value, floor=floor, flapping=flapping)
                text = localized_reasons(rule, facts)
                assert text["zh"] and text["en"]
                assert untranslated_in_zh(text["zh"]) == [], text["zh"]
                assert not CJK.search(text["en"]), text["en"]
                assert "{" not in text["zh"] + text["en"], text
                # the English never leaks through: the Chinese says the shipped rule's Chinese name
                assert text["zh"].startswith(RULE_NAMES["zh"][rule.id]) or flapping, text["zh"]


def test_reasons_carry_the_facts() -> None:
    by_id = {r.id: r for r in SHIPPED}
    smoke = localized_reasons(by_id["smoke-obscuration"], AlertFacts(rule="smoke-obscuration", value=8.2))
    assert smoke["zh"] == "烟雾浓度超标：烟雾浓度 8.2 %/m，达到或超过 3 %/m，持续 5 秒"
    assert smoke["en"] == "Smoke obscuration: obscuration 8.2 %/m, at or above 3 %/m for 5 s"
    fire = localized_reasons(by_id["fire-confirmed"], AlertFacts(rule="fire-confirmed", value=3, floor=-1))
    assert fire["zh"] == "确认火警：地下1层有 3 个探测器在 2 分钟内相继报警"
    assert fire["en"] == "Confirmed fire: 3 detectors in alarm on basement 1 within 2 min"
    absent = by_id["device-absent"]
    assert localized_reason(absent, AlertFacts(rule=absent.id, value="offline"), lang="zh") == (
        "设备未上报：设备离线已超过 30 秒"
    )
    count = by_id["repeated-false-alarms"]
    assert localized_reason(count, AlertFacts(rule=count.id, value=4), lang="en") == (
        "Repeated alarms from one detector: raised 4 times within 24 h"
    )


def test_an_operators_own_rule_is_named_in_chinese_not_by_its_english_description() -> None:
    own = RuleConfig.model_validate(
        {
            "id": "hot-kitchen",
            "kind": "threshold",
            "description": "kitchen too hot",
            "severity": "warning",
            "metric": "celsius",
            "above": 70,
        }
    )
    text = localized_reasons(own, AlertFacts(rule="hot-kitchen", value=75.0))
    assert untranslated_in_zh(text["zh"]) == [], text["zh"]
    assert text["zh"].startswith("温度告警")
    assert text["en"].startswith("kitchen too hot: temperature 75 °C")
    named = RuleConfig.model_validate(
        {
            "id": "gas",
            "kind": "state",
            "description": "厨房燃气报警",
            "severity": "fire",
            "metric": "gas",
            "equals": True,
        }
    )
    assert localized_reasons(named, AlertFacts(rule="gas"))["zh"] == "厨房燃气报警"


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


async def test_the_api_serves_both_languages_beside_the_machine_fields(client: TestClient, runtime: Any) -> None:
    t0 = now_ms()
    inject(runtime, "yg01-sd-09a", {"alarm": True, "obscuration": 8.2}, ts_ms=t0)
    inject(runtime, "yg01-sd-09b", {"alarm": True}, ts_ms=t0 + 1000)
    response = await client.get("/api/v1/alerts?active=true", headers=VIEWER)
    assert response.status == 200, await response.text()
    items = (await response.json())["items"]
    by_rule = {a["rule"]: a for a in items}
    assert {"smoke-detector-alarm", "fire-confirmed"} <= set(by_rule), sorted(by_rule)
    for item in items:
        assert item["reason"]  # the engine's own text stays
        assert untranslated_in_zh(item["reason_i18n"]["zh"]) == [], item
        assert not CJK.search(item["reason_i18n"]["en"]), item
    confirmed = by_rule["fire-confirmed"]
    floor = confirmed["floor"]
    assert confirmed["reason_i18n"]["zh"] == f"确认火警：{floor}层有 2 个探测器在 2 分钟内相继报警"
    detail = await client.get(f"/api/v1/alerts/{confirmed['id']}", headers=VIEWER)
    assert (await detail.json())["reason_i18n"] == confirmed["reason_i18n"]
