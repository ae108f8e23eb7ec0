"""Action links: a URL signed for one incident and one recipient, expiring, that opens a small page for that
incident on the recipient's phone.

The token is ``base64url(claims) "." base64url(HMAC-SHA256(secret, "firegrid-link-v1." + base64url(claims)))``
with claims ``{"i": incident id, "r": recipient, "e": expiry (Unix seconds)}``.  Opening the link (GET) changes
nothing -- chat apps and link-preview bots open every link they see; only the page's POST acts.

Pure: the secret and the clock come in as arguments.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import orjson

from alerts.config import LinksConfig

PREFIX = b"firegrid-link-v1."
PATH = "/l/"  # the gateway's route for action links: GET shows the page, POST acts


class LinkError(Exception):
    """The link is malformed, tampered with or expired: ``reason`` says which (safe to show)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LinkClaims:
    incident_id: int
    recipient: str
    expires_s: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: str, claims_b64: str) -> bytes:
    return hmac.new(secret.encode(), PREFIX + claims_b64.encode(), hashlib.sha256).digest()


def make_token(secret: str, *, incident_id: int, recipient: str, expires_s: int) -> str:
    claims = _b64(orjson.dumps({"i": incident_id, "r": recipient, "e": expires_s}))
    return f"{claims}.{_b64(_mac(secret, claims))}"


def verify_token(secret: str, token: str, *, now_s: int) -> LinkClaims:
    claims_b64, dot, mac_b64 = token.partition(".")
    if not dot or not claims_b64 or not mac_b64 or len(token) > 2048:
        raise LinkError("malformed link")
    try:
        mac = _unb64(mac_b64)
    except ValueError:
        raise LinkError("malformed link") from None
    if not hmac.compare_digest(mac, _mac(secret, claims_b64)):
        raise LinkError("invalid signature")
    try:
        data = orjson.loads(_unb64(claims_b64))
        claims = LinkClaims(incident_id=int(data["i"]), recipient=str(data["r"]), expires_s=int(data["e"]))
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        raise LinkError("malformed link") from None
    if claims.expires_s < now_s:
        raise LinkError("link expired")
    return claims


def link_for(config: LinksConfig, *, incident_id: int, recipient: str, now_ms: int) -> str:
    token = make_token(
        config.secret.get_secret_value(),
        incident_id=incident_id,
        recipient=recipient,
        expires_s=now_ms // 1000 + config.ttl_s,
    )
    return config.base_url.rstrip("/") + PATH + token
