"""The link a point's QR code carries: ``<public_url>/m/p/<point>?t=<token>``.

The token is HMAC-SHA256(secret, "firegrid-point:" + point) cut to 128 bits: whoever holds the printed code may submit
for that point and no other, and a token cannot be derived for another point without the secret.  It never expires:
the sticker stays on the extinguisher for years; rotating ``inspections.secret`` retires every printed code at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote


def point_token(secret: str, point: str) -> str:
    mac = hmac.new(secret.encode(), b"firegrid-point:" + point.encode(), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def token_valid(secret: str, point: str, token: str) -> bool:
    return hmac.compare_digest(point_token(secret, point).encode(), token.encode()[:64])


def point_url(public_url: str, secret: str, point: str) -> str:
    return f"{public_url.rstrip('/')}/m/p/{quote(point)}?t={point_token(secret, point)}"
