"""The voice providers' result receipts: the handler behind ``POST /api/v1/voice/receipts`` (mounted by the API).

Neither provider signs its receipt push, so, as with inbound SMS, the receipt reaches firegrid through a relay that
signs it as a Standard Webhook (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with
``notify.voice.receipt_secret``; unsigned or badly signed receipts are refused with 401.  The body is the
provider's own receipt, unchanged:

* **aliyun** "VoiceReport" (语音呼叫结果回执): a JSON array (or one object) of ``{"call_id", "out_id",
  "status_code", "status_msg", "dtmf", "duration", "callee", ...}``; ``out_id`` is ours (the outbox row), a
  ``status_code`` of ``200000`` or a ``duration`` above 0 means answered, ``dtmf`` the keys pressed.
* **tencent** voice callbacks: ``{"voiceprompt_callback": {"callid", "mobile", "nationcode", "result", ...}}``
  (``result`` ``"0"``: answered) and ``{"voicekey_callback": {"callid", "mobile", "nationcode", "keypress"}}``;
  they name the callee, not our context, so they match the latest call to that number.

A receipt goes on the alert's audit trail; ``notify.voice.ack_key`` among the keys pressed acknowledges the
incident ``by`` ``voice:<member name>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from alerts import webhook
from alerts.store import AlertStore
from alerts.store.errors import InvalidIncidentTransition


@dataclass(frozen=True, slots=True)
class Receipt:
    out_id: str | None
    phone: str | None  # E.164
    answered: bool
    keys: str
    status: str


@dataclass(frozen=True, slots=True)
class ReceiptResult:
    status: int  # the HTTP status to answer with
    message: str
    recorded: int = 0
    acknowledged: tuple[int, ...] = field(default_factory=tuple)


def _e164(mobile: Any, nationcode: Any = "86") -> str | None:
    digits = str(mobile or "").lstrip("+")
    if not digits.isdigit():
        return None
    if len(digits) == 11 and digits.startswith("1"):
        return f"+{nationcode or '86'}{digits}"
    return f"+{digits}"


def parse(data: Any) -> list[Receipt]:
    """The receipts in one provider body; raises ValueError on a shape neither provider sends."""
    if isinstance(data, dict) and ("voiceprompt_callback" in data or "voicekey_callback" in data):
        part = data.get("voiceprompt_callback") or data.get("voicekey_callback")
        if not isinstance(part, dict):
            raise ValueError("callback is not an object")
        phone = _e164(part.get("mobile"), part.get("nationcode"))
        if "voicekey_callback" in data:
            keys = str(part.get("keypress", ""))
            return [Receipt(out_id=None, phone=phone, answered=True, keys=keys, status="keypress")]
        result = str(part.get("result", ""))
        return [Receipt(out_id=None, phone=phone, answered=result == "0", keys="", status=f"result {result}")]
    items = data if isinstance(data, list) else [data]
    out = []
    for item in items:
        if not isinstance(item, dict) or not ("out_id" in item or "call_id" in item):
            raise ValueError("not an aliyun VoiceReport or a tencent voice callback")
        code = str(item.get("status_code", ""))
        try:
            duration = float(item.get("duration") or 0)
        except (TypeError, ValueError):
            duration = 0.0
        out.append(
            Receipt(
                out_id=str(item["out_id"]) if item.get("out_id") is not None else None,
                phone=_e164(item.get("callee")),
                answered=code == "200000" or duration > 0,
                keys=str(item.get("dtmf") or ""),
                status=f"{code} {item.get('status_msg', '')}".strip(),
            )
        )
    return out


def handle_voice_receipt(store: AlertStore, *, headers: Mapping[str, str], body: bytes, now_ms: int) -> ReceiptResult:
    voice = store.notify.voice
    if voice is None:
        return ReceiptResult(404, "voice is not configured")
    if voice.receipt_secret is None:
        return ReceiptResult(401, "notify.voice.receipt_secret is not configured")
    lower = {k.lower(): v for k, v in headers.items()}
    if "webhook-signature" not in lower:
        return ReceiptResult(401, "unsigned request")
    if not webhook.verify(voice.receipt_secret.get_secret_value(), dict(lower), body, now_s=now_ms / 1000):
        return ReceiptResult(401, "bad or expired webhook signature")
    try:
        receipts = parse(orjson.loads(body))
    except orjson.JSONDecodeError:
        return ReceiptResult(400, "body is not JSON")
    except ValueError as exc:
        return ReceiptResult(400, str(exc))
    recorded = 0
    acknowledged: list[int] = []
    for receipt in receipts:
        call = store.voice_call_for(out_id=receipt.out_id, phone=receipt.phone)
        if call is None:
            continue
        store.record_voice_receipt(
            call, answered=receipt.answered, keys=receipt.keys, status=receipt.status, now_ms=now_ms
        )
        recorded += 1
        if voice.ack_key in receipt.keys and call.incident_id is not None:
            try:
                changes = store.acknowledge_incident(
                    call.incident_id,
                    by=f"voice:{call.recipient}",
                    note="acknowledged by key press",
                    now_ms=now_ms,
                    by_name=call.recipient,
                )
            except InvalidIncidentTransition:
                continue  # acknowledged meanwhile (by someone else, or an earlier receipt): nothing left to do
            acknowledged.extend(int(c.alert_id) for c in changes if c.alert_id is not None)
    if not recorded:
        return ReceiptResult(404, "no call matches this receipt")
    return ReceiptResult(200, f"recorded {recorded} receipt(s)", recorded, tuple(acknowledged))
