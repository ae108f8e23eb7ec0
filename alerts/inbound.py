"""Acknowledge by SMS reply: the handler behind ``POST /api/v1/sms/inbound`` (mounted by the HTTP API).

Accepted formats (the request must be signed; unsigned or badly signed requests are refused with 401):

* **Twilio** (``notify.sms.provider: twilio``): Twilio's form-encoded incoming-message webhook (``From``, ``Body``,
  ...), signed with ``X-Twilio-Signature = base64(HMAC-SHA1(auth_token, <full request URL> + <each POST parameter
  name and value, sorted by name, concatenated>))``.
* **Generic JSON** for every other provider (put a small relay in front of the provider's MO/"上行短信" callback):
  ``{"from": "+8613800000001", "text": "1234"}`` signed as a Standard Webhook (``webhook-id``,
  ``webhook-timestamp``, ``webhook-signature``) with ``notify.sms.inbound_secret`` (``whsec_...``).

The sender must be a roster member (or drill receiver); the first run of digits in the text is the incident's short
code.  ``<code> 到`` (or ``<code> A``, "arrived") marks the incident on scene; any other reply acknowledges it: every
still-``raised`` alert of that incident is acknowledged ``by`` ``sms:<member name>``, and the incident's timeline
names the member with the sender's number masked (``sms:+86138****0001``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import orjson

from alerts import webhook
from alerts.fanout import mask_phone
from alerts.store import AlertStore, InvalidTransition


@dataclass(frozen=True, slots=True)
class InboundResult:
    status: int  # the HTTP status to answer with
    message: str
    acknowledged: tuple[int, ...] = field(default_factory=tuple)
    incident_id: int | None = None


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    data = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def handle_inbound_sms(
    store: AlertStore,
    *,
    headers: Mapping[str, str],
    body: bytes,
    url: str,
    now_ms: int,
) -> InboundResult:
    """Verify, parse and act on one inbound SMS.  ``url`` is the full URL the provider called (Twilio signs it)."""
    sms = store.notify.sms
    if sms is None:
        return InboundResult(404, "sms is not configured")
    lower = {k.lower(): v for k, v in headers.items()}
    sender: str | None
    text: str
    if "x-twilio-signature" in lower:
        if sms.provider != "twilio" or sms.auth_token is None:
            return InboundResult(401, "twilio signature but provider is not twilio")
        try:
            params = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError:
            return InboundResult(400, "body is not UTF-8")
        expected = twilio_signature(sms.auth_token.get_secret_value(), url, params)
        if not hmac.compare_digest(expected, lower["x-twilio-signature"]):
            return InboundResult(401, "bad X-Twilio-Signature")
        sender, text = params.get("From"), params.get("Body", "")
    elif "webhook-signature" in lower:
        if sms.inbound_secret is None:
            return InboundResult(401, "notify.sms.inbound_secret is not configured")
        if not webhook.verify(sms.inbound_secret.get_secret_value(), dict(lower), body, now_s=now_ms / 1000):
            return InboundResult(401, "bad or expired webhook signature")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return InboundResult(400, "body is not JSON")
        if not isinstance(data, dict):
            return InboundResult(400, "body must be a JSON object")
        sender, text = data.get("from"), str(data.get("text", ""))
    else:
        return InboundResult(401, "unsigned request")
    if not sender:
        return InboundResult(400, "no sender number")
    names = {m.phone: m.name for m in store.notify.roster}
    names.update({m.phone: m.name for m in store.notify.drill_receivers.members if m.phone})
    member = names.get(sender)
    if member is None:
        return InboundResult(403, "sender is not on the roster")
    match = _CODE.search(text)
    if match is None:
        return InboundResult(422, "no acknowledgement code in the reply")
    code = match.group(1)
    incident = store.incident_by_code(code)
    if incident is None:
        return InboundResult(404, f"no open incident with code {code}")
    actor = f"sms:{mask_phone(sender)}"
    try:
        if match.group(2):
            changes = store.arrive_incident(incident.id, actor=actor, by_name=member, via="sms", now_ms=now_ms)
            ids = tuple(int(c.alert_id) for c in changes if c.alert_id is not None and c.type == "alert.acknowledged")
            return InboundResult(200, f"incident {incident.id} on scene", ids, incident.id)
        changes = store.acknowledge_incident(
            incident.id,
            by=f"sms:{member}",
            note="acknowledged by SMS reply",
            now_ms=now_ms,
            actor=actor,
            by_name=member,
        )
    except InvalidTransition as exc:
        if match.group(2):
            return InboundResult(409, str(exc), (), incident.id)
        changes = []  # already acknowledged by someone else: nothing left to do, and that is fine
    ids = tuple(int(c.alert_id) for c in changes if c.alert_id is not None)
    return InboundResult(200, f"acknowledged {len(ids)} alert(s)", ids, incident.id)


# The incident's code, then (right after it) an arrival word: "1234 到", "1234到场", "1234 A".  A word before the
# code ("收到 1234") is an acknowledgement, not an arrival.
_CODE = re.compile(r"(\d{4,10})(?:\s*(到场|到达|到|[Aa])(?![A-Za-z0-9]))?")
