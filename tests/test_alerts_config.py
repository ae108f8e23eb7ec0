"""The ``notify`` config section: validation with paths, private URLs refused, the example config, routing."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from alerts import routing
from alerts.config import NotifyConfig
from rules.types import Severity
from testkit.emulators.scenario import ROSTER, ROUTES, WEBHOOK_SECRET, notify_config

ROOT = Path(__file__).resolve().parent.parent


def test_private_webhook_urls_refused_unless_allowed() -> None:
    for url in (
        "http://127.0.0.1/x",
        "http://localhost/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/x",
        "http://[::1]/x",
        "http://192.168.1.1/x",
    ):
        with pytest.raises(ValidationError, match="allow_private"):
            NotifyConfig.model_validate({"webhooks": [{"url": url, "secret": WEBHOOK_SECRET}]})
    ok = NotifyConfig.model_validate(
        {"webhooks": [{"url": "http://127.0.0.1/x", "secret": WEBHOOK_SECRET, "allow_private": True}]}
    )
    assert ok.webhooks[0].allow_private


def test_bad_values_are_reported() -> None:
    with pytest.raises(ValidationError) as info:
        NotifyConfig.model_validate(
            {
                "roster": [{"name": "a", "phone": "13800000001", "role": "x"}],  # not E.164
                "webhooks": [{"url": "https://example.com/x", "secret": "plain"}],  # not whsec_
                "sms": {"provider": "aliyun"},  # credentials missing
                "bogus": 1,
            }
        )
    text = str(info.value)
    for needle in ("roster.0.phone", "webhooks.0.secret", "sms", "bogus"):
        assert needle in text


def test_route_references_are_checked() -> None:
    with pytest.raises(ValidationError, match="unknown member"):
        NotifyConfig.model_validate({"roster": ROSTER, "routes": [{"name": "r", "tiers": [{"members": ["nobody"]}]}]})
    with pytest.raises(ValidationError, match="no roster member has role"):
        NotifyConfig.model_validate({"roster": ROSTER, "routes": [{"name": "r", "tiers": [{"roles": ["chef"]}]}]})


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FG_HOOK_SECRET", WEBHOOK_SECRET)
    config = NotifyConfig.model_validate(
        {"webhooks": [{"url": "https://example.com/x", "secret": "env:FG_HOOK_SECRET"}]}
    )
    assert config.webhooks[0].secret.get_secret_value() == WEBHOOK_SECRET
    assert WEBHOOK_SECRET not in repr(config)


def _ms(local: str) -> int:
    return int(
        datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC).timestamp() * 1000
    )


def test_routing_by_grid_role_and_duty_schedule() -> None:
    roster = [
        *ROSTER,
        {
            "name": "夜班",
            "phone": "+8613800000005",
            "role": "grid_worker",
            "grids": ["g01"],
            "on_duty": [{"days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], "start": "20:00", "end": "08:00"}],
        },
    ]
    config = notify_config(roster=roster, routes=ROUTES)
    night = _ms("2026-11-30T02:00:00")  # a Monday, 2 am local time
    day = _ms("2026-11-30T14:00:00")
    names = lambda **kw: [r.name for r in routing.recipients(config, severity=Severity.FIRE, **kw)]  # noqa: E731
    assert "夜班" in names(tier=0, grid="g01", building="yg01", now_ms=night)
    assert "夜班" not in names(tier=0, grid="g01", building="yg01", now_ms=day)
    assert names(tier=0, grid="g02", building="hp02", now_ms=day) == []  # nobody of g01 for another grid
    assert names(tier=2, grid="g02", building="hp02", now_ms=day) == ["赵值班"]  # the community duty officer
    assert routing.tier_count(config, severity=Severity.WARNING, grid="g01", building="yg01") == 0


def test_example_community_config_passes_check_config() -> None:
    result = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "firegrid"), "check-config", str(ROOT / "examples" / "community.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    import yaml

    data = yaml.safe_load((ROOT / "examples" / "community.yaml").read_text(encoding="utf-8"))
    config = NotifyConfig.model_validate(data["notify"])
    assert config.roster and config.routes and config.webhooks and config.sms is not None


def test_robot_voice_and_drill_robot_references_are_checked() -> None:
    robot = {"name": "grid-wecom", "platform": "wecom", "key": "wecom-key-0f3a"}
    with pytest.raises(ValidationError, match="unknown robot 'nope'"):
        NotifyConfig.model_validate({"roster": ROSTER, "routes": [{"name": "r", "tiers": [{"robots": ["nope"]}]}]})
    with pytest.raises(ValidationError, match=r"notify\.voice is not configured"):
        NotifyConfig.model_validate(
            {"roster": ROSTER, "routes": [{"name": "r", "tiers": [{"members": [ROSTER[0]["name"]], "voice": True}]}]}
        )
    with pytest.raises(ValidationError, match=r"drill_receivers.robots\[0\]: unknown robot"):
        NotifyConfig.model_validate({"robots": [robot], "drill_receivers": {"robots": ["other"]}})
    with pytest.raises(ValidationError, match="duplicate robot"):
        NotifyConfig.model_validate({"robots": [robot, robot]})
    ok = NotifyConfig.model_validate(
        {"roster": ROSTER, "robots": [robot], "routes": [{"name": "r", "tiers": [{"robots": ["grid-wecom"]}]}]}
    )
    assert ok.robots[0].limit_per_min == 20 and "wecom-key-0f3a" not in repr(ok)
