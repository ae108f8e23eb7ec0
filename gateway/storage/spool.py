"""The on-disk spool that feeds InfluxDB: the durable hand-off point for telemetry.

A reading is acknowledged to the broker only after its line-protocol line is appended here and fsync'ed, so a
SIGKILL at any moment loses nothing the broker delivered.  The InfluxDB writer reads the spool in order and advances a
cursor; an outage of InfluxDB simply lets the spool grow, bounded by ``spool_max_mb``.

Two streams, each a directory of append-only segment files: ``alert`` (never dropped) and ``telemetry`` (the oldest
segments are dropped first when the spool is over its cap, and the points dropped are counted).  Keeping alert points
in their own stream is what makes "drop the oldest telemetry, never an alert" a file deletion instead of a rewrite.

Record format: ``<u32 length><u32 points><u32 crc32><i64 first_ts_ms><payload>`` where payload is newline-joined
line protocol.  A torn record at the tail (the process died mid-write) fails its length or CRC and is truncated on
open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass, replace
from io import BufferedWriter
from pathlib import Path

log = logging.getLogger("firegrid.spool")

_HEADER = struct.Struct("<IIIq")
SEGMENT_BYTES = 4 * 1024 * 1024
STREAMS = ("alert", "telemetry")


class SpoolError(Exception):
    """The spool could not be written (disk full, permissions): the gateway must not acknowledge anything."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Records read from a stream: the lines, and where the cursor goes once InfluxDB has them."""

    stream: str
    lines: list[bytes]
    points: int
    end: tuple[int, int]  # (segment number, byte offset) just past the last record
    first_ts_ms: int
    rest: int = 0  # points left in the spool (both streams) after this batch, when it was read


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int
    points: int
    first_ts_ms: int


class _Stream:
    def __init__(self, root: Path, name: str, *, fsync: bool, segment_bytes: int | None = None) -> None:
        self.name = name
        self.segment_bytes = segment_bytes or SEGMENT_BYTES
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self.segments: list[_Segment] = []
        self.cursor: tuple[int, int] = (0, 0)
        self.pending_points = 0  # points after the cursor
        self._fh: BufferedWriter | None = None
        self._load()

    # --- opening ---------------------------------------------------------------------------------------------

    def _cursor_path(self) -> Path:
        return self.dir / "cursor.json"

    def _load(self) -> None:
        numbers = sorted(int(p.stem) for p in self.dir.glob("*.seg") if p.stem.isdigit())
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads(self._cursor_path().read_text())
            self.cursor = (int(data["segment"]), int(data["offset"]))
        for number in numbers:
            path = self.dir / f"{number:012d}.seg"
            if number < self.cursor[0]:
                path.unlink(missing_ok=True)  # fully written to InfluxDB before the last stop
                continue
            size, points, first_ts, after_cursor, aligned = self._scan(path, number)
            if number == self.cursor[0] and not aligned:
                # Not a record boundary of its segment: the cursor belongs to an earlier segment of the same number
                # (earlier versions reused a segment's number once the writer had caught up with it, full).  Write
                # the whole segment again: points are idempotent, and none is stranded behind a stale cursor.
                log.warning(
                    "spool %s: cursor %d is not a record boundary of %s (%d bytes); re-reading the segment",
                    self.name,
                    self.cursor[1],
                    path.name,
                    size,
                )
                self.cursor = (number, 0)
                after_cursor = points
            self.segments.append(_Segment(number, path, size, points, first_ts))
            self.pending_points += after_cursor
        if self.segments and self.cursor[0] < self.segments[0].number:
            self.cursor = (self.segments[0].number, 0)

    def _scan(self, path: Path, number: int) -> tuple[int, int, int, int, bool]:
        """Validate a segment; truncate a torn tail.  Returns (size, points, first ts, points after cursor, whether
        the cursor, when it is in this segment, is on a record boundary)."""
        data = path.read_bytes()
        offset = points = after = 0
        first_ts = 0
        aligned = number != self.cursor[0] or self.cursor[1] == 0
        while offset + _HEADER.size <= len(data):
            if offset == self.cursor[1] and number == self.cursor[0]:
                aligned = True
            length, count, crc, ts = _HEADER.unpack_from(data, offset)
            end = offset + _HEADER.size + length
            if end > len(data) or zlib.crc32(data[offset + _HEADER.size : end]) != crc:
                break
            if points == 0:
                first_ts = ts
            points += count
            if (number, offset) >= self.cursor:
                after += count
            offset = end
        if offset == self.cursor[1] and number == self.cursor[0]:
            aligned = True  # at the end: everything in it was written
        if offset != len(data):
            log.warning("spool segment %s: truncating a torn record (%d bytes)", path.name, len(data) - offset)
            with path.open("r+b") as fh:
                fh.truncate(offset)
                os.fsync(fh.fileno())
        return offset, points, first_ts, after, aligned

    # --- writing ---------------------------------------------------------------------------------------------

    def _open_tail(self) -> BufferedWriter:
        if not self.segments or self.segments[-1].size >= self.segment_bytes:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            # After the cursor's segment, never at its number: when the writer has caught up with a full segment,
            # commit() deletes it and the cursor stays at its end, so a new file of the same number would be read
            # from that offset (nothing, until it grew past it, then from the middle of a record).
            number = self.segments[-1].number + 1 if self.segments else self.cursor[0] + 1
            self.segments.append(_Segment(number, self.dir / f"{number:012d}.seg", 0, 0, 0))
        if self._fh is None:
            self._fh = self.segments[-1].path.open("ab")
        return self._fh

    def append(self, lines: list[bytes], *, first_ts_ms: int) -> int:
        """Append one record; returns its size in bytes.  Not durable until :meth:`sync`."""
        payload = b"\n".join(lines)
        fh = self._open_tail()
        record = _HEADER.pack(len(payload), len(lines), zlib.crc32(payload), first_ts_ms) + payload
        fh.write(record)
        segment = self.segments[-1]
        if segment.points == 0:
            segment.first_ts_ms = first_ts_ms
        segment.size += len(record)
        segment.points += len(lines)
        self.pending_points += len(lines)
        return len(record)

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            if self._fsync:
                os.fdatasync(self._fh.fileno())

    # --- reading ---------------------------------------------------------------------------------------------

    def read(self, max_points: int) -> Batch | None:
        """Records from the cursor on, up to ``max_points`` points (at least one record)."""
        lines: list[bytes] = []
        number, offset = self.cursor
        end = self.cursor
        first_ts = 0
        for segment in self.segments:
            if segment.number < number:
                continue
            if segment.number > number:
                number, offset = segment.number, 0
            if offset >= segment.size:
                continue
            # No flush needed: every append is flushed (and fsync'ed) before the spool lock is released.  Read only
            # about what ``max_points`` needs, not the rest of a 4 MiB segment every time.
            want = max(1 << 20, (max_points - len(lines)) * 256)
            with segment.path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read(min(segment.size - offset, want))
                pos = 0
                while pos + _HEADER.size <= len(data) and len(lines) < max_points:
                    length, _count, _crc, ts = _HEADER.unpack_from(data, pos)
                    stop = pos + _HEADER.size + length
                    if stop > len(data):
                        if pos:
                            break  # the rest of this record next time
                        data += fh.read(stop - len(data))  # one record larger than the read size
                    payload = data[pos + _HEADER.size : stop]
                    if not lines:
                        first_ts = ts
                    lines.extend(payload.split(b"\n"))
                    pos = stop
            end = (segment.number, offset + pos)
            if len(lines) >= max_points or offset + pos < segment.size:
                break  # full, or this segment has more (never skip ahead to the next one)
        if not lines:
            if self.pending_points:  # nothing after the cursor: the count is wrong, not the data
                log.warning(
                    "spool %s: %d points counted but none readable; count reset", self.name, self.pending_points
                )
                self.pending_points = 0
            return None
        return Batch(
            stream=self.name,
            lines=lines,
            points=len(lines),
            end=end,
            first_ts_ms=first_ts,
            rest=max(0, self.pending_points - len(lines)),
        )

    def commit(self, batch: Batch) -> None:
        """InfluxDB has ``batch``: move the cursor past it and delete segments that are fully written."""
        if batch.end < self.cursor:  # the segment was dropped meanwhile
            return
        self.pending_points = max(0, self.pending_points - batch.points)
        self.cursor = batch.end
        self._save_cursor()
        while len(self.segments) > 1 and self.segments[0].number < self.cursor[0]:
            self._delete(self.segments.pop(0))
        if len(self.segments) == 1:
            only = self.segments[0]
            if self.cursor == (only.number, only.size) and only.size >= self.segment_bytes:
                self.segments.pop(0)
                self._delete(only)

    def _save_cursor(self) -> None:
        # Not fsync'ed: losing the cursor only means rewriting points InfluxDB already has (idempotent).
        tmp = self._cursor_path().with_suffix(".tmp")
        tmp.write_text(json.dumps({"segment": self.cursor[0], "offset": self.cursor[1]}))
        tmp.replace(self._cursor_path())

    def _delete(self, segment: _Segment) -> None:
        if self._fh is not None and not self.segments:
            self._fh.close()  # it was the tail
            self._fh = None
        segment.path.unlink(missing_ok=True)

    def drop_oldest(self) -> int:
        """Drop the oldest segment (never the one being appended to); returns how many unsent points went."""
        if len(self.segments) < 2:
            return 0
        segment = self.segments.pop(0)
        dropped = segment.points
        if self.cursor[0] == segment.number:
            dropped = self._points_after(segment, self.cursor[1])
        elif self.cursor[0] > segment.number:
            dropped = 0
        self.pending_points = max(0, self.pending_points - dropped)
        if self.cursor[0] <= segment.number:
            self.cursor = (self.segments[0].number, 0)
            self._save_cursor()
        self._delete(segment)
        return dropped

    @staticmethod
    def _points_after(segment: _Segment, offset: int) -> int:
        data = segment.path.read_bytes()
        points = 0
        while offset + _HEADER.size <= len(data):
            length, count, _crc, _ts = _HEADER.unpack_from(data, offset)
            points += count
            offset += _HEADER.size + length
        return points

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def oldest_pending_ts(self) -> int | None:
        """The timestamp of the first record after the cursor (not of its segment's first record, which may have
        been written long ago)."""
        for segment in self.segments:
            start = self.cursor[1] if segment.number == self.cursor[0] else 0
            if segment.number < self.cursor[0] or not segment.points or segment.size <= start:
                continue
            if start == 0:
                return segment.first_ts_ms
            try:
                with segment.path.open("rb") as fh:
                    fh.seek(start)
                    header = fh.read(_HEADER.size)
            except OSError:
                return segment.first_ts_ms
            if len(header) < _HEADER.size:
                return segment.first_ts_ms
            return int(_HEADER.unpack(header)[3])
        return None

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None


class Spool:
    """Both streams, with the size cap.  Single-threaded: the pipeline appends, the writer reads and commits."""

    def __init__(self, root: Path, *, max_bytes: int, fsync: bool = True) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.max_bytes = max_bytes
        # The cap is kept by dropping whole telemetry segments, never the live one: a segment must be a small part
        # of the cap, or a small cap (spool_max_mb: 1) would be overshot by a whole 4 MiB segment.
        segment_bytes = min(SEGMENT_BYTES, max(4096, max_bytes // 8))
        self.streams = {name: _Stream(root, name, fsync=fsync, segment_bytes=segment_bytes) for name in STREAMS}
        self.dropped_points = 0
        # The commit thread appends while the InfluxDB writer (event loop) reads and commits.
        self._lock = threading.RLock()

    def append(self, *, telemetry: list[bytes], alerts: list[bytes], first_ts_ms: int) -> int:
        """Append and make durable; returns how many telemetry points were dropped to stay under the cap."""
        with self._lock:
            return self._append(telemetry=telemetry, alerts=alerts, first_ts_ms=first_ts_ms)

    def _append(self, *, telemetry: list[bytes], alerts: list[bytes], first_ts_ms: int) -> int:
        # Make room first, so that the spool stays under its cap on disk too, not only after this append.
        incoming = sum(len(line) + 1 for line in (*telemetry, *alerts)) + 2 * _HEADER.size
        dropped = self._make_room(incoming)
        try:
            if alerts:
                self.streams["alert"].append(alerts, first_ts_ms=first_ts_ms)
            if telemetry:
                self.streams["telemetry"].append(telemetry, first_ts_ms=first_ts_ms)
            for stream in self.streams.values():
                stream.sync()
        except OSError as exc:
            raise SpoolError(f"cannot append to the spool in {self.root}: {exc}") from exc
        dropped += self._make_room(0)
        if dropped:
            self.dropped_points += dropped
            log.warning(
                "spool over its cap of %d MB: dropped the %d oldest telemetry points",
                self.max_bytes // 1_048_576,
                dropped,
            )
        return dropped

    def _make_room(self, incoming: int) -> int:
        """Drop the oldest telemetry segments until ``incoming`` more bytes fit under the cap; points dropped."""
        dropped = 0
        telemetry_stream = self.streams["telemetry"]
        while self.size_bytes + incoming > self.max_bytes:
            if len(telemetry_stream.segments) < 2:
                break  # only alerts and the live segment remain: alerts are never dropped
            dropped += telemetry_stream.drop_oldest()
        return dropped

    def read(self, max_points: int) -> Batch | None:
        """Alert points first: a fire is never queued behind telemetry on its way to InfluxDB either."""
        with self._lock:
            alert, telemetry = self.streams["alert"], self.streams["telemetry"]
            batch = alert.read(max_points)
            if batch is not None:
                return replace(batch, rest=batch.rest + telemetry.pending_points)
            return telemetry.read(max_points)  # (the alert stream has nothing after its cursor)

    def commit(self, batch: Batch) -> None:
        with self._lock:
            self.streams[batch.stream].commit(batch)

    @property
    def pending_points(self) -> int:
        return sum(s.pending_points for s in self.streams.values())

    @property
    def size_bytes(self) -> int:
        with self._lock:  # (the metrics thread must not see the middle of an append)
            return sum(s.size_bytes for s in self.streams.values())

    def oldest_pending_ts(self) -> int | None:
        with self._lock:
            return self._oldest_pending_ts()

    def _oldest_pending_ts(self) -> int | None:
        stamps = [t for s in self.streams.values() if (t := s.oldest_pending_ts()) is not None]
        return min(stamps) if stamps else None

    def close(self) -> None:
        with self._lock:
            for stream in self.streams.values():
                stream.close()
