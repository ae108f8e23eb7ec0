"""``--record FILE``: what was published, as JSON lines ``firegrid replay`` reads.

One line per message: ``{"t": <epoch ms it was sent, virtual clock>, "topic": ..., "payload": <object, array or
string as sent>}``.  A payload that is a JSON object or array is written as that JSON; anything else (a status
string, a malformed payload) as its text.  Invalid UTF-8 cannot be held by JSON text and is written with U+FFFD
replacement characters.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import IO

import orjson

from simulators.sim import Message


class Recorder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[bytes] = self.path.open("wb")
        self.count = 0

    def write(self, messages: list[Message]) -> None:
        if not messages:
            return
        self._file.write(b"".join(orjson.dumps(m.record()) + b"\n" for m in messages))
        self.count += len(messages)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
