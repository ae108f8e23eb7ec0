"""Streaming frame reader for a UITD TCP connection: arbitrary chunks in, frames and named errors out.

Rules (all decided on the byte stream alone, so any chunking of the same bytes gives the same results):

* A candidate frame starts at every ``@@``. Bytes before a candidate that no frame or error accounts for are
  reported as one ``no_start`` error per run (or per ``max_frame_size`` bytes of a long run).
* A candidate whose length field is over ``max_app_data_len`` is ``bad_length``; one whose frame would be over
  ``max_frame_size`` is ``oversized``. Neither is waited for, so the buffer stays under ``max_frame_size``.
* A complete candidate is checked by :func:`~gateway.ingest.uitd.codec.decode_frame` (``bad_end``,
  ``bad_checksum``). After any error the reader resynchronises one byte after the failed ``@@``, so a good frame
  that was inside the span a bad length field claimed is still found.
* A complete, valid frame that lies wholly inside the span a candidate's length field claims wins: the
  candidate is reported ``truncated`` (a device that gave up mid-frame and started again) and reading resumes
  at the inner frame, without waiting for the claimed span to fill.
* :meth:`FrameReader.close` ends the stream: a candidate still incomplete is ``truncated`` and the bytes after
  it are searched again.
"""

from __future__ import annotations

from dataclasses import dataclass

from .codec import (
    END,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    MAX_APP_DATA_LEN,
    MAX_FRAME_SIZE,
    START,
    Frame,
    declared_app_data_len,
    decode_frame,
)
from .errors import (
    BadChecksumError,
    BadEndError,
    BadLengthError,
    NoStartError,
    OversizedError,
    ReaderClosedError,
    TruncatedError,
    UitdError,
)

__all__ = ["REASONS", "FrameError", "FrameReader"]

#: Every ``FrameError.reason`` the reader can produce.
REASONS = frozenset(
    cls.reason for cls in (NoStartError, TruncatedError, BadLengthError, OversizedError, BadEndError, BadChecksumError)
)


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameError:
    """Bytes the reader could not turn into a frame. ``offset`` is the position in the whole stream; ``data`` is
    the bytes concerned (the failed frame, its header, or the skipped run), at most ``max_frame_size`` of them."""

    reason: str
    detail: str
    offset: int
    data: bytes


class FrameReader:
    """Incremental decoder of one connection's byte stream. Not thread-safe; one reader per connection."""

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE, max_app_data_len: int = MAX_APP_DATA_LEN) -> None:
        if max_frame_size < FRAME_OVERHEAD:
            raise ValueError(f"max_frame_size must be at least {FRAME_OVERHEAD}, got {max_frame_size}")
        if not 0 <= max_app_data_len <= 0xFFFF:
            raise ValueError(f"max_app_data_len must be in 0..65535, got {max_app_data_len}")
        self._max_frame = max_frame_size
        self._max_app = max_app_data_len
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self._covered = 0  # stream offset up to which bytes belong to a reported frame or error
        self._junk = bytearray()  # skipped bytes not yet reported
        self._junk_at = 0  # stream offset of _junk[0]
        self._checked: dict[int, bool] = {}  # stream offset of a complete '@@' candidate -> is a valid frame
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes held (an incomplete candidate frame and unreported skipped bytes)."""
        return len(self._buf) + len(self._junk)

    @property
    def closed(self) -> bool:
        return self._closed

    def feed(self, chunk: bytes) -> list[Frame | FrameError]:
        """Add ``chunk`` and return the frames and errors it completes, in stream order."""
        if self._closed:
            raise ReaderClosedError("feed() after close()")
        self._buf += chunk
        return self._drain(final=False)

    def close(self) -> list[Frame | FrameError]:
        """End of stream: report what is still buffered. Further ``feed`` calls raise ``ReaderClosedError``."""
        if self._closed:
            return []
        out = self._drain(final=True)
        self._closed = True
        return out

    # -- internals ------------------------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[Frame | FrameError]:
        out: list[Frame | FrameError] = []
        buf = self._buf
        pos = 0
        while True:
            start = buf.find(START, pos)
            if start < 0:
                stop = len(buf)
                if not final and stop > pos and buf[-1] == START[0]:
                    stop -= 1  # may be the first half of a start marker
                self._skip(pos, stop, out)
                pos = stop
                break
            self._skip(pos, start, out)
            self._flush_junk(out)
            step = self._candidate(start, final=final, out=out)
            if step is None:
                pos = start
                break
            pos = step
        if final:
            self._flush_junk(out)
        del buf[:pos]
        self._base += pos
        if self._checked:
            self._checked = {k: v for k, v in self._checked.items() if k >= self._base}
        return out

    def _skip(self, a: int, b: int, out: list[Frame | FrameError]) -> None:
        first = max(self._base + a, self._covered)
        last = self._base + b
        if first >= last:
            return
        if self._junk and self._junk_at + len(self._junk) != first:
            self._flush_junk(out)
        if not self._junk:
            self._junk_at = first
        data = self._buf[first - self._base : b]
        i = 0
        while i < len(data):
            room = self._max_frame - len(self._junk)
            self._junk += data[i : i + room]
            i += room
            if len(self._junk) >= self._max_frame:
                self._flush_junk(out)
                self._junk_at = first + i

    def _flush_junk(self, out: list[Frame | FrameError]) -> None:
        if not self._junk:
            return
        out.append(
            FrameError(
                reason=NoStartError.reason,
                detail=f"{len(self._junk)} bytes outside any frame (no '@@' start marker)",
                offset=self._junk_at,
                data=bytes(self._junk),
            )
        )
        self._junk_at += len(self._junk)
        self._junk.clear()

    def _candidate(self, start: int, *, final: bool, out: list[Frame | FrameError]) -> int | None:
        """Handle the candidate at ``start``: the buffer index to continue from, or None to wait for bytes."""
        buf = self._buf
        avail = len(buf) - start
        if avail < HEADER_SIZE:
            if not final:
                return None
            return self._fail(TruncatedError(f"stream ended {avail} bytes into a frame header"), start, len(buf), out)
        length = declared_app_data_len(buf[start : start + HEADER_SIZE])
        if length > self._max_app:
            exc: UitdError = BadLengthError(f"application data length {length} is over the limit {self._max_app}")
            return self._fail(exc, start, start + HEADER_SIZE, out)
        total = FRAME_OVERHEAD + length
        if total > self._max_frame:
            exc = OversizedError(f"a {total}-byte frame is over max_frame_size {self._max_frame}")
            return self._fail(exc, start, start + HEADER_SIZE, out)
        inner = self._inner_frame(start, start + total)
        if inner is not None:
            exc = TruncatedError(f"a complete frame starts {inner - start} bytes into this declared {total}-byte frame")
            self._report(exc, start, inner, out)
            return inner
        if avail < total:
            if not final:
                return None
            exc = TruncatedError(f"stream ended {avail} bytes into a {total}-byte frame")
            return self._fail(exc, start, len(buf), out)
        try:
            frame = decode_frame(bytes(buf[start : start + total]), max_app_data_len=self._max_app)
        except UitdError as err:
            return self._fail(err, start, start + total, out)
        out.append(frame)
        self._covered = self._base + start + total
        return start + total

    def _inner_frame(self, start: int, span_end: int) -> int | None:
        """Start of the first complete, valid frame that begins and ends inside the span ``start`` declares.

        A frame that is already whole inside the span of an unfinished (or broken) one means the earlier one was
        cut short: the device gave up on it and started again. Taking the inner frame keeps a stray ``@@`` from
        holding later frames back until ``max_frame_size`` bytes have arrived.
        """
        buf = self._buf
        limit = min(span_end, len(buf))
        q = buf.find(START, start + 1)
        while 0 <= q < limit:
            if q + HEADER_SIZE <= len(buf):
                length = declared_app_data_len(buf[q : q + HEADER_SIZE])
                end = q + FRAME_OVERHEAD + length
                fits = length <= self._max_app and end - q <= self._max_frame
                if fits and end < span_end and end <= len(buf) and self._is_frame(q, end):
                    return q
            q = buf.find(START, q + 1)
        return None

    def _is_frame(self, start: int, end: int) -> bool:
        """Whether buf[start:end] is a valid frame; remembered by stream offset, so each is checked once."""
        key = self._base + start
        known = self._checked.get(key)
        if known is None:
            known = self._buf[end - 2 : end] == END
            if known:
                try:
                    decode_frame(bytes(self._buf[start:end]), max_app_data_len=self._max_app)
                except UitdError:
                    known = False
            self._checked[key] = known
        return known

    def _report(self, exc: UitdError, start: int, end: int, out: list[Frame | FrameError]) -> None:
        data = bytes(self._buf[start:end])
        out.append(FrameError(reason=exc.reason, detail=str(exc), offset=self._base + start, data=data))
        self._covered = max(self._covered, self._base + end)

    def _fail(self, exc: UitdError, start: int, end: int, out: list[Frame | FrameError]) -> int:
        """Report the candidate at ``start`` and resynchronise one byte after its ``@@``."""
        self._report(exc, start, end, out)
        return start + 1
