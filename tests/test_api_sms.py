"""``POST /api/v1/sms/inbound``: a roster member's signed SMS reply with the incident's short code acknowledges it
(``alerts/inbound.py``), mounted by the API; bad or unsigned requests get a problem document."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from standardwebhooks.webhooks import Webhook

from gateway.api import create_api_app
from testkit.api import build_runtime, config_for_tests, inject

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "community.yaml"


@pytest.fixture
def runtime(tmp_path: Path) -> Any:
    rt = build_runtime(config_for_tests(EXAMPLE, tmp_path))
    yield rt
    rt.store.close()


@pytest.fixture
async def client(runtime: Any) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(create_api_app(runtime))) as c:
        yield c


def signed(runtime: Any, document: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    secret = runtime.config.notify.sms.inbound_secret.get_secret_value()
    body = orjson.dumps(document)
    now = datetime.now(tz=UTC)
    signature = Webhook(secret).sign("msg_test_1", now, body.decode())
    headers = {
        "webhook-id": "msg_test_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }
    return body, headers


async def test_signed_reply_acknowledges(client: TestClient, runtime: Any) -> None:
    changes = inject(runtime, "yg01-sd-01a", {"alarm": True})
    alert_id = next(c.alert_id for c in changes if c.type == "alert.raised")
    code = runtime.store.get_alert(alert_id).ack_code
    body, headers = signed(runtime, {"from": "+8613800000001", "text": f"{code} 收到"})
    response = await client.post("/api/v1/sms/inbound", data=body, headers=headers)
    assert response.status == 200, await response.text()
    assert (await response.json())["acknowledged"] == [alert_id]
    alert = runtime.store.get_alert(alert_id)
    assert alert.state == "acknowledged" and alert.acknowledged_by == "sms:王建国"


async def test_unsigned_or_forged_replies_are_refused(client: TestClient, runtime: Any) -> None:
    changes = inject(runtime, "yg01-sd-01a", {"alarm": True})
    alert_id = next(c.alert_id for c in changes if c.type == "alert.raised")
    code = runtime.store.get_alert(alert_id).ack_code
    response = await client.post("/api/v1/sms/inbound", json={"from": "+8613800000001", "text": code})
    assert response.status == 401 and response.content_type == "application/problem+json"
    body, headers = signed(runtime, {"from": "+8613800000001", "text": code})
    response = await client.post("/api/v1/sms/inbound", data=body.replace(b"0001", b"0002"), headers=headers)
    assert response.status == 401
    body, headers = signed(runtime, {"from": "+8600000000000", "text": code})  # not on the roster
    response = await client.post("/api/v1/sms/inbound", data=body, headers=headers)
    assert response.status == 403
    big = b"x" * (runtime.config.http.max_body_kb * 1024 + 1)
    response = await client.post("/api/v1/sms/inbound", data=big, headers=headers)
    assert response.status == 413 and response.content_type == "application/problem+json"
    assert runtime.store.get_alert(alert_id).state == "raised"
