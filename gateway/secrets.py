"""Secrets in configuration: a literal, ``env:NAME`` (read from the environment) or ``file:/path`` (read from a
file such as a Docker secret).  Resolved once at load time and kept as :class:`pydantic.SecretStr` so that they are
never printed by ``repr``, logs or API responses.

The one implementation lives in :mod:`alerts.secrets`: the alerts package may not import the gateway, while the
gateway (whose config composes the alerts' ``notify`` section) may import alerts.
"""

from __future__ import annotations

from pydantic import SecretStr

from alerts.secrets import Secret, resolve_secret

__all__ = ["Secret", "resolve_secret", "reveal"]


def reveal(secret: SecretStr | None) -> str | None:
    return None if secret is None else secret.get_secret_value()
