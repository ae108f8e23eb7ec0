"""Bearer-token authentication, roles and scopes.

* Tokens come from ``http.tokens`` in the config.  A presented token is compared with every configured token in
  constant time (``hmac.compare_digest`` over SHA-256 digests, so neither the content nor the length of a configured
  token leaks through timing, and the loop does not stop at the first match).
* Tokens are never logged and never echoed: a failed request says only *that* it failed.
* Roles are ordered ``viewer < operator < admin``; ``ingest`` (a vendor gateway's token) may only push telemetry.
* A token limited to ``grids`` and/or ``buildings`` sees a building when it is in one of its grids OR in its building
  list (both lists widen the view; a token with neither sees everything).  Everything outside — alerts, devices,
  incidents, rejections, counts, live events — is invisible to it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.config import FiregridConfig

Role = Literal["viewer", "operator", "admin", "ingest"]
# ``ingest`` ranks below viewer: it reads nothing; only the ingest endpoints (gateway/api/ingest.py) accept it
ROLE_RANK: dict[str, int] = {"ingest": -1, "viewer": 0, "operator": 1, "admin": 2}


class AuthError(Exception):
    """No token, a malformed header or an unknown token (HTTP 401)."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    grids: frozenset[str] | None
    buildings: frozenset[str] | None
    # building id -> grid id, from the config (a scoped token resolves grids through it)
    building_grids: dict[str, str]

    @property
    def scoped(self) -> bool:
        return self.grids is not None or self.buildings is not None

    def has_role(self, role: Role) -> bool:
        return ROLE_RANK[self.role] >= ROLE_RANK[role]

    def sees_building(self, building: str | None, grid: str | None = None) -> bool:
        if not self.scoped:
            return True
        if building is None:
            return False
        if self.buildings is not None and building in self.buildings:
            return True
        if self.grids is not None:
            # The config's grid for a building wins over what a record claims about itself.
            actual = self.building_grids.get(building, None)
            return actual is not None and actual in self.grids
        return False

    def sees_grid(self, grid: str) -> bool:
        if not self.scoped:
            return True
        return any(self.sees_building(b) for b, g in self.building_grids.items() if g == grid)

    def visible_buildings(self, candidates: Iterable[str]) -> list[str]:
        return [b for b in candidates if self.sees_building(b)]


@dataclass(frozen=True, slots=True)
class _TokenEntry:
    digest: bytes
    name: str
    role: Role
    grids: frozenset[str] | None
    buildings: frozenset[str] | None


class TokenAuthenticator:
    def __init__(self, config: FiregridConfig) -> None:
        self._building_grids = {b.id: b.grid for b in config.buildings}
        self._entries = tuple(
            _TokenEntry(
                digest=_digest(t.token.get_secret_value()),
                name=t.name,
                role=t.role,
                grids=None if t.grids is None else frozenset(t.grids),
                buildings=None if t.buildings is None else frozenset(t.buildings),
            )
            for t in config.http.tokens
        )

    @property
    def configured(self) -> bool:
        return bool(self._entries)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError("an Authorization: Bearer <token> header is required")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("the Authorization header must be 'Bearer <token>'")
        presented = _digest(token)
        found: _TokenEntry | None = None
        for entry in self._entries:  # no early exit: the time taken does not depend on which token matched
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        if found is None:
            raise AuthError("the token is not valid")
        return Principal(
            name=found.name,
            role=found.role,
            grids=found.grids,
            buildings=found.buildings,
            building_grids=self._building_grids,
        )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
