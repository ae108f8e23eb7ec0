"""A command's config file: load it, or print every problem and exit 2.

Exit status 2 is what argparse uses for a command line it cannot accept; a config file a command cannot start with is
the same kind of mistake, so every ``firegrid`` command reports it the same way, one ``path: message`` line per
problem on stderr.  ``gateway.tools.cli.main`` returns the code of such an exit, so callers in the same process (the
tests) see a return value, as from any other failure.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import NoReturn

from gateway.config import ConfigError, FiregridConfig, load_config

EXIT_CONFIG = 2


def exit_with_problems(problems: Iterable[str], *, prog: str | None = None) -> NoReturn:
    """Print each problem on its own line on stderr and exit 2.  ``prog`` (``"verify"``) prefixes the first line
    with ``firegrid verify:``, for commands whose other errors carry that prefix too."""
    lines = list(problems)
    if prog is not None and lines:
        lines[0] = f"firegrid {prog}: {lines[0]}"
    for line in lines:
        print(line, file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def load_or_exit(path: str | os.PathLike[str] | None, *, prog: str | None = None) -> FiregridConfig:
    """:func:`gateway.config.load_config`, or :func:`exit_with_problems` with what is wrong with the file."""
    try:
        return load_config(path)
    except ConfigError as exc:
        exit_with_problems(exc.problems, prog=prog)
