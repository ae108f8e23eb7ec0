"""The house rules a reader relies on, checked: every module small enough to read, and a repository that stands
alone (the import rules themselves are import-linter contracts, run by ``make lint``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("common", "rules", "alerts", "gateway", "simulators")
MAX_LINES = 800


def _tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:  # not a git checkout (an unpacked release): walk the folders instead
        return [p for pattern in patterns for p in ROOT.glob(pattern.replace("*", "**/*", 1)) if p.is_file()]
    return [ROOT / line for line in out.stdout.splitlines()]


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_longer_than_a_reader_can_hold(package: str) -> None:
    modules = [p for p in (ROOT / package).rglob("*.py")]
    assert modules, package
    too_long = {
        str(p.relative_to(ROOT)): n
        for p in modules
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}


def test_the_repository_points_at_nothing_outside_it() -> None:
    """A user has only the repository: no path up out of it, no notes that are not in it."""
    # Spelled in pieces so this file does not match its own check (nor a repository-wide grep for the same words).
    outside = re.compile("|".join((r"\.\./" + "shared", "FIELD" + "-NOTES")))
    files = _tracked("*.py", "*.md", "*.toml", "*.yml", "*.yaml", "Makefile", "Dockerfile")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in files
        if p.exists()
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert hits == []
