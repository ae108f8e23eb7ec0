"""The voice tier's side of the store: the daily budget's count, a placed call and its result receipt on the
alert's audit trail, and calling off the calls still waiting once nobody needs waking."""

from __future__ import annotations

from dataclasses import dataclass

from alerts.store.core import Core, TxCursor, audit


@dataclass(frozen=True, slots=True)
class VoiceCallRecord:
    """A placed (or attempted) call, as a receipt finds it."""

    outbox_id: int
    alert_id: int | None
    incident_id: int | None
    recipient: str
    phone: str
    state: str


def cancel_calls(cur: TxCursor, incident_id: int, *, now_ms: int, reason: str) -> None:
    """Call off the voice calls of an incident still waiting (acknowledged, dispatched or resolved meanwhile)."""
    left = cur.execute(
        "SELECT 1 FROM alerts WHERE incident_id = ? AND open = 1 AND state = 'raised' LIMIT 1", (incident_id,)
    ).fetchone()
    if left is None:
        cur.execute(
            "UPDATE outbox SET state = 'cancelled', done_ms = ?, last_error = ? WHERE incident_id = ?"
            " AND channel = 'voice' AND state = 'pending'",
            (now_ms, reason, incident_id),
        )


class Voice:
    """The voice tier's side (a part of :class:`~alerts.store.AlertStore`)."""

    _core: Core

    def voice_count(self, *, phone: str, since_ms: int) -> int:
        """Calls placed (or perhaps placed) to ``phone`` since ``since_ms``: what the daily budget counts."""
        with self._core.lock:
            row = self._core.db.execute(
                "SELECT COUNT(*) FROM outbox WHERE channel = 'voice' AND phone = ?"
                " AND state IN ('attempting', 'sent', 'unknown') AND attempt_ms >= ?",
                (phone, since_ms),
            ).fetchone()
        return int(row[0])

    def voice_placed(self, item_id: int, *, call_id: str | None, now_ms: int) -> None:
        """The provider accepted the call: ``sent``, with its call id on the alert's audit trail."""
        with self._core.tx() as cur:
            cur.execute(
                "UPDATE outbox SET state = 'sent', done_ms = ?, last_error = NULL WHERE id = ?", (now_ms, item_id)
            )
            row = cur.execute("SELECT alert_id, recipient, body FROM outbox WHERE id = ?", (item_id,)).fetchone()
            if row is not None and row["alert_id"] is not None:
                detail = {"recipient": row["recipient"], "call_id": call_id, "outbox_id": item_id}
                audit(cur, int(row["alert_id"]), now_ms, "voice_call", "system", detail)

    def voice_call_for(self, *, out_id: str | None, phone: str | None) -> VoiceCallRecord | None:
        """The call a receipt is about: by our ``out_id`` when the provider hands it back (aliyun OutId), else the
        latest call to ``phone`` (tencent's callback names the callee, not our context)."""
        with self._core.lock:
            row = None
            if out_id and out_id.isdigit():
                row = self._core.db.execute(
                    "SELECT * FROM outbox WHERE id = ? AND channel = 'voice'", (int(out_id),)
                ).fetchone()
            if row is None and phone:
                row = self._core.db.execute(
                    "SELECT * FROM outbox WHERE channel = 'voice' AND phone = ? AND state IN ('sent', 'unknown')"
                    " ORDER BY attempt_ms DESC, id DESC LIMIT 1",
                    (phone,),
                ).fetchone()
        if row is None:
            return None
        return VoiceCallRecord(
            outbox_id=int(row["id"]),
            alert_id=row["alert_id"],
            incident_id=row["incident_id"],
            recipient=str(row["recipient"]),
            phone=str(row["phone"]),
            state=str(row["state"]),
        )

    def record_voice_receipt(
        self, call: VoiceCallRecord, *, answered: bool, keys: str, status: str, now_ms: int
    ) -> None:
        """The provider's result receipt, on the alert's audit trail; an ``unknown`` call that was answered was
        placed after all."""
        with self._core.tx() as cur:
            if call.state == "unknown" and answered:
                cur.execute(
                    "UPDATE outbox SET state = 'sent', last_error = 'receipt: answered' WHERE id = ?",
                    (call.outbox_id,),
                )
            if call.alert_id is not None:
                detail = {"recipient": call.recipient, "answered": answered, "keys": keys, "status": status}
                audit(cur, int(call.alert_id), now_ms, "voice_receipt", f"voice:{call.recipient}", detail)
