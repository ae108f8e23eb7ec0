"""The error every configuration problem is reported with: a list of ``path: message`` lines, so a command can
print all of them at once (``firegrid check-config`` prints each on its own line and exits 2)."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(Exception):
    """The configuration could not be loaded; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
