"""Secrets in configuration: a literal, ``env:NAME`` or ``file:/path``, resolved once at load time into a
:class:`pydantic.SecretStr` so they never show in a repr, a log or an API response.

This is the one implementation; ``gateway.secrets`` re-exports it (alerts may not import the gateway).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr


def resolve_secret(value: Any) -> Any:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value[4:]
        try:
            return os.environ[name]
        except KeyError:
            raise ValueError(f"environment variable {name!r} is not set") from None
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {str(path)!r}: {exc.strerror}") from None
    return value


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]


def reveal(secret: SecretStr | None) -> str:
    return "" if secret is None else secret.get_secret_value()
