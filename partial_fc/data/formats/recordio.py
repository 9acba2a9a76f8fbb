"""MXNet RecordIO, read in pure Python (no mxnet).

On disk a record is one or more parts, each:

    uint32 magic 0xced7230a | uint32 lrec | payload (length bytes) | zero padding to 4 bytes

with ``cflag = lrec >> 29`` and ``length = lrec & (2**29 - 1)``. The writer splits a record
wherever its payload holds the magic at a 4-byte-aligned position and drops those four bytes:
cflag 0 is a whole record, 1 its first part, 2 a middle part, 3 the last part. Joining puts
the magic back between parts (dmlc-core recordio.cc). An ``.idx`` file maps keys to the byte
offset of each record's first part, one ``key\\toffset`` line per record; keys need not be
contiguous and offsets need not be increasing.

Records are unpacked with InsightFace's IRHeader, struct ``<IfQQ`` (flag, label, id, id2, 24
bytes): when flag > 0 the label is instead ``flag`` float32s following the header.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
IRHEADER = struct.Struct("<IfQQ")


class CorruptRecordError(ValueError):
    """A record that cannot be read: bad magic, truncated, or broken continuation flags."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"record at byte {offset}: {reason}")
        self.offset, self.reason = offset, reason


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | np.ndarray  # a float when flag == 0, else `flag` float32 values
    id: int
    id2: int


def unpack(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and the payload that follows (image bytes)."""
    if len(record) < IRHEADER.size:
        raise ValueError(f"record of {len(record)} bytes is shorter than the {IRHEADER.size}-byte IRHeader")
    flag, label, id1, id2 = IRHEADER.unpack_from(record)
    body = record[IRHEADER.size :]
    if flag > 0:
        if len(body) < 4 * flag:
            raise ValueError(f"IRHeader flag {flag} promises {flag} float labels but only {len(body)} bytes follow")
        labels = np.frombuffer(body, dtype="<f4", count=flag).copy()
        return IRHeader(flag, labels, id1, id2), body[4 * flag :]
    return IRHeader(flag, float(label), id1, id2), body


def read_idx(path: str | Path) -> dict[int, int]:
    """key -> byte offset from an MXNet .idx file. Blank lines are ignored; anything else
    malformed is an error naming the line."""
    index: dict[int, int] = {}
    with open(path, encoding="ascii") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'key<TAB>offset', got {line.rstrip()!r}")
            try:
                index[int(fields[0])] = int(fields[1])
            except ValueError:
                raise ValueError(f"{path}:{lineno}: key and offset must be integers, got {line.rstrip()!r}") from None
    return index


class RecordIOReader:
    """Random access (``read_at``) and sequential scanning of one .rec file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f: BinaryIO = open(self.path, "rb")
        self.size = self.path.stat().st_size

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _part_header(self, offset: int, first: int) -> tuple[int, int]:
        """(cflag, length) of the part at ``offset``; ``first`` is the record's first offset
        (for error messages)."""
        self._f.seek(offset)
        head = self._f.read(8)
        if len(head) < 8:
            raise CorruptRecordError(first, f"truncated part header at byte {offset} (file is {self.size} bytes)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise CorruptRecordError(first, f"bad magic 0x{magic:08x} at byte {offset}, expected 0x{MAGIC:08x}")
        length = lrec & _LENGTH_MASK
        if offset + 8 + length > self.size:
            raise CorruptRecordError(first, f"part at byte {offset} claims {length} bytes past the end of the file")
        return lrec >> 29, length

    def read_at(self, offset: int, *, limit: int | None = None) -> tuple[bytes, int, int]:
        """Read the record whose first part starts at ``offset``.

        Returns (its first ``limit`` bytes, or all of it when limit is None; its full length;
        the offset just past it). Parts beyond ``limit`` are walked by their headers only,
        which makes indexing a large file cheap.
        """
        want = sys.maxsize if limit is None else limit
        chunks: list[bytes] = []
        have = total = 0
        pos = offset
        while True:
            cflag, length = self._part_header(pos, offset)
            expected = (0, 1) if pos == offset else (2, 3)
            if cflag not in expected:
                where = "first" if pos == offset else "continuation"
                raise CorruptRecordError(offset, f"{where} part at byte {pos} has cflag {cflag}, expected one of {expected}")
            if pos != offset:  # the writer dropped a magic here; put it back
                if have < want:
                    chunks.append(MAGIC_BYTES[: want - have])
                    have += len(chunks[-1])
                total += 4
            if have < want:
                chunks.append(self._f.read(min(length, want - have)))
                have += len(chunks[-1])
            total += length
            pos += 8 + (length + 3) // 4 * 4
            if cflag in (0, 3):
                return b"".join(chunks), total, pos

    def scan(self, *, limit: int | None = None) -> Iterator[tuple[int, tuple[bytes, int] | CorruptRecordError]]:
        """(offset, (record prefix, full length)) for every record in file order, reading at
        most ``limit`` bytes of each. A corrupt record yields its error instead, and reading
        resumes at the next 4-byte-aligned magic that starts a record."""
        pos = 0
        while pos + 8 <= self.size:
            try:
                data, length, nxt = self.read_at(pos, limit=limit)
            except CorruptRecordError as err:
                yield pos, err
                nxt = self._resync(pos + 4)
            else:
                yield pos, (data, length)
            pos = nxt
        if pos < self.size:
            self._f.seek(pos)
            if self._f.read(self.size - pos).strip(b"\0"):
                yield pos, CorruptRecordError(pos, f"{self.size - pos} trailing bytes after the last record")

    def _resync(self, start: int) -> int:
        """Offset of the next aligned magic whose part starts a record (cflag 0 or 1)."""
        pos = (start + 3) // 4 * 4
        chunk_size = 1 << 20
        while pos + 8 <= self.size:
            self._f.seek(pos)
            chunk = self._f.read(chunk_size + 8)
            words = np.frombuffer(chunk[: len(chunk) // 4 * 4], dtype="<u4")
            for i in np.flatnonzero(words[:-1] == MAGIC):
                if int(words[i + 1]) >> 29 in (0, 1):
                    return pos + 4 * int(i)
            pos += chunk_size
        return self.size
