"""The error every configuration problem is reported with: a list of ``path: message`` lines, so a command can
print all of them at once (``firegrid check-config`` prints each on its own line and exits 2)."""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["ConfigError", "format_loc", "validation_problems"]


class ConfigError(Exception):
    """The configuration could not be loaded; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def format_loc(loc: tuple[int | str, ...], *, prefix: str = "") -> str:
    """``("mqtt", "buildings", 2)`` -> ``mqtt.buildings[2]``, below ``prefix`` when one is given."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validation_problems(exc: ValidationError, *, prefix: str = "") -> list[str]:
    """One ``path: message`` line per problem pydantic found, in the words an operator editing YAML needs: the key's
    path as written in the file, "unknown key" for a misspelling, "required key is missing"."""
    problems: list[str] = []
    for error in exc.errors(include_url=False):
        # validator wrappers are pydantic's, not the file's: they never name a key
        loc = tuple(p for p in error["loc"] if p not in ("function-after", "function-before"))
        message = str(error["msg"]).removeprefix("Value error, ")
        path = format_loc(loc, prefix=prefix)
        if not path:
            problems.extend(message.splitlines())
            continue
        if error["type"] == "extra_forbidden":
            message = "unknown key (not allowed here; check the spelling)"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.extend(f"{path}: {line}" for line in message.splitlines() or [""])
    return problems
