"""Standard Webhooks (https://www.standardwebhooks.com/) signatures: the one signer and its verifier.

* ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")>`` where ``key``
  is the base64-decoded part of the ``whsec_<base64>`` secret; several space-separated signatures may be sent (while
  a secret is rotated), one matching is enough.

Here, below every package, because the alert notifier signs with it, the inbound SMS endpoint verifies with it, and
the demo's receiver and the benchmarks speak the same format.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt (``timestamp``: integer Unix seconds)."""
    mac = hmac.new(secret_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now_s: float, tolerance_s: int = 300) -> bool:
    """Whether a request carries a valid signature made within ``tolerance_s`` of ``now_s`` (replays of an old
    request are refused); header names in any case."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id = lower.get("webhook-id")
    stamp = lower.get("webhook-timestamp")
    sigs = lower.get("webhook-signature")
    if not msg_id or not stamp or not sigs or not stamp.isdigit():
        return False
    if abs(now_s - int(stamp)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(stamp), body).encode()
    return any(hmac.compare_digest(expected, s.encode()) for s in sigs.split())
