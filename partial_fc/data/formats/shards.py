"""Webdataset tar shards, each complete or absent.

A shard is written to ``NAME.tar.tmp`` and renamed to ``NAME.tar`` (os.replace, atomic on one
file system) only once it is closed, so an interrupted run never leaves a truncated shard that
looks finished. Tar headers carry no time, user or host, so equal inputs give equal bytes.
Each sample is two members: ``KEY.jpg`` (JPEG bytes) and ``KEY.cls`` (the label in ASCII).

The USTAR headers are formatted here rather than by ``tarfile``: the bytes are the same as
tarfile's (a test checks), at a fifth of the cost per member, which matters at 2 members per
image and a few thousand images per second.
"""

from __future__ import annotations

import os
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

_BLOCK = 512
_RECORD = tarfile.RECORDSIZE  # tarfile pads archives to whole records of 20 blocks
_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12x")


def ustar_header(name: str, size: int) -> bytes:
    """The 512-byte USTAR header tarfile writes for a regular file ``name`` of ``size`` bytes
    with mode 0444, uid/gid 0, mtime 0 and no user or group names."""
    encoded = name.encode("utf-8")
    if len(encoded) > 100:
        raise ValueError(f"tar member name must be at most 100 bytes, got {len(encoded)}: {name!r}")
    if size >= 8**11:
        raise ValueError(f"tar member {name!r} of {size} bytes exceeds the USTAR size field (8 GiB)")

    def octal(value: int, digits: int) -> bytes:
        return b"%0*o\0" % (digits - 1, value)

    fields = [encoded, octal(0o444, 8), octal(0, 8), octal(0, 8), octal(size, 12), octal(0, 12), b" " * 8,
              b"0", b"", b"ustar\0", b"00", b"", b"", b"", b"", b""]  # fmt: skip (no device numbers)
    header = bytearray(_HEADER.pack(*fields))
    header[148:156] = b"%06o\0 " % sum(header)  # checksum over the header with the field as spaces
    return bytes(header)


@dataclass(frozen=True)
class ShardInfo:
    name: str
    num_samples: int
    num_bytes: int


def _member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _archive_bytes(members_bytes: int) -> int:
    """File size of a tar holding ``members_bytes`` of members: two end blocks, then padded to
    a whole record."""
    return -(-(members_bytes + 2 * _BLOCK) // _RECORD) * _RECORD


class ShardWriter:
    """Writes ``{prefix}-{index:06d}.tar`` into ``out_dir``, starting a new shard before one
    would exceed ``max_bytes`` or hold more than ``max_samples`` samples."""

    def __init__(
        self, out_dir: str | Path, *, prefix: str = "train", max_bytes: int = 1 << 30, max_samples: int | None = None
    ) -> None:
        if max_bytes < _RECORD:
            raise ValueError(f"max_bytes must be at least one tar record ({_RECORD}), got {max_bytes}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_bytes, self.max_samples = prefix, max_bytes, max_samples
        self.shards: list[ShardInfo] = []
        self._file: BinaryIO | None = None
        self._name = ""
        self._count = 0
        self._bytes = 0

    def _open_next(self) -> None:
        self._name = f"{self.prefix}-{len(self.shards):06d}.tar"
        self._file = open(self.out_dir / (self._name + ".tmp"), "wb")
        self._count = self._bytes = 0

    def _finish_current(self) -> None:
        if self._file is None:
            return
        size = _archive_bytes(self._bytes)
        self._file.write(b"\0" * (size - self._bytes))  # end-of-archive blocks and record padding
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self.out_dir / (self._name + ".tmp"), self.out_dir / self._name)
        self.shards.append(ShardInfo(name=self._name, num_samples=self._count, num_bytes=size))
        self._file = None

    def _add(self, name: str, data: bytes) -> None:
        assert self._file is not None
        self._file.write(ustar_header(name, len(data)))
        self._file.write(data)
        self._file.write(b"\0" * (-len(data) % _BLOCK))
        self._bytes += _member_bytes(len(data))

    def write(self, *, key: str, jpeg: bytes, label: int) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key must not contain '.' or '/' (webdataset splits on them), got {key!r}")
        cls = str(int(label)).encode("ascii")
        size = _member_bytes(len(jpeg)) + _member_bytes(len(cls))
        full = self._file is not None and (
            _archive_bytes(self._bytes + size) > self.max_bytes
            or (self.max_samples is not None and self._count >= self.max_samples)
        )
        if full:
            self._finish_current()
        if self._file is None:
            self._open_next()
        self._add(f"{key}.jpg", jpeg)
        self._add(f"{key}.cls", cls)
        self._count += 1

    def close(self) -> list[ShardInfo]:
        """Finish the open shard; returns every shard written, in order."""
        self._finish_current()
        return list(self.shards)

    def abort(self) -> None:
        """Drop the shard being written (its .tmp file); finished shards stay."""
        if self._file is not None:
            self._file.close()
            (self.out_dir / (self._name + ".tmp")).unlink(missing_ok=True)
            self._file = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
