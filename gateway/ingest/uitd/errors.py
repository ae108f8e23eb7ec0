"""Exceptions of the GB/T 26875.3 (UITD) codec: one class per failure class, all under :class:`UitdError`.

Every class carries a stable ``reason`` string; :class:`~gateway.ingest.uitd.stream.FrameReader` reports the same
strings in its :class:`~gateway.ingest.uitd.stream.FrameError` values, so logs and metrics can count by reason.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadChecksumError",
    "BadEndError",
    "BadLengthError",
    "InvalidFieldError",
    "InvalidTimeError",
    "NoStartError",
    "OversizedError",
    "ReaderClosedError",
    "TruncatedError",
    "UitdError",
]


class UitdError(Exception):
    """Base class of every error the UITD codec raises."""

    reason: ClassVar[str] = "uitd_error"


class NoStartError(UitdError):
    """The bytes do not begin with the start marker ``@@`` (0x40 0x40)."""

    reason = "no_start"


class TruncatedError(UitdError):
    """The bytes end before the frame does (header or declared application data incomplete)."""

    reason = "truncated"


class BadLengthError(UitdError):
    """The application-data length field is over the limit, or disagrees with the size of the bytes given."""

    reason = "bad_length"


class OversizedError(UitdError):
    """The declared frame would be larger than the reader's ``max_frame_size`` bound."""

    reason = "oversized"


class BadEndError(UitdError):
    """The end marker ``##`` (0x23 0x23) is not where the length field puts it."""

    reason = "bad_end"


class BadChecksumError(UitdError):
    """The checksum byte is not the sum (mod 256) of the control unit and application data."""

    reason = "bad_checksum"


class InvalidFieldError(UitdError, ValueError):
    """A value given to build or encode a frame or information object is out of its wire range."""

    reason = "invalid_field"


class InvalidTimeError(UitdError, ValueError):
    """A 6-byte time stamp does not name a real calendar time (e.g. month 13), so it has no ``datetime``."""

    reason = "bad_time"


class ReaderClosedError(UitdError):
    """``FrameReader.feed`` was called after ``close``."""

    reason = "closed"
