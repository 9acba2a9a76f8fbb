"""Random access into webdataset tar shards: where each sample's image lies, and its label.

    index = load_or_build_index("data/synth", config.shards)
    data = os.pread(fd_of(index.shard_paths[index.shard[i]]), index.size[i], index.offset[i])

Samples are grouped as webdataset groups them: consecutive members sharing the key (the path up
to the first '.' of the basename; extensions lower-cased). The image member is ``jpg``, else
``jpeg``, else ``png``; the label member ``cls`` is an ASCII integer. Shards are read with
``tarfile`` (GNU long names, pax headers), uncompressed only: offsets into a ``.tar.gz`` would
point into compressed bytes.

Nothing here raises on bad data: unreadable or damaged shards and samples without an image, a
label or with a label that does not parse are skipped and counted in ``SampleIndex.skipped``.

The index is cached in ``DIR/tar_index.npz`` (written to a unique temporary name, then
``os.replace``: concurrent builders replace identical content atomically) with each shard's
name, byte size and mtime_ns; a shard whose size or mtime changed is indexed again, the others
are reused. A directory that is not writable keeps the index in memory.
"""

from __future__ import annotations

import os
import re
import tarfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from partial_fc.util.atomic import write_atomic

INDEX_NAME = "tar_index.npz"
INDEX_FORMAT = "partial-fc-tar-index"
INDEX_VERSION = 1
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")  # preference order when a sample holds several
SKIP_REASONS = (
    "shards_unreadable",  # could not be opened as a tar at all
    "shards_damaged",  # a tar error or a missing end-of-archive block cut the shard short
    "samples_missing_image",
    "samples_missing_label",
    "samples_bad_label",  # the cls member is not an ASCII integer
    "samples_truncated",  # the image member's data runs past the end of the file
    "samples_duplicate_member",  # two members with the same key and extension
)
_MAX_LABEL_BYTES = 32
_BLOCK = 512
_UNKNOWN = -1  # size/mtime of a shard that could not be stat'ed
_META = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


@dataclass(frozen=True, eq=False)
class SampleIndex:
    """Sample i: image bytes at ``offset[i]`` (``size[i]`` bytes) in ``shard_paths[shard[i]]``,
    label ``label[i]``. Rows are grouped by shard, in shard then tar order.

    ``shard_skipped`` is (num_shards, len(SKIP_REASONS)): what each shard lost and why.
    ``reused_shards``: shards taken from the cache rather than read."""

    shard_paths: tuple[str, ...]
    shard: np.ndarray  # (N,) int32
    offset: np.ndarray  # (N,) int64
    size: np.ndarray  # (N,) int64
    label: np.ndarray  # (N,) int64
    shard_skipped: np.ndarray  # (S, R) int64
    reused_shards: int = 0

    def __len__(self) -> int:
        return len(self.label)

    @property
    def skipped(self) -> dict[str, int]:
        totals = self.shard_skipped.sum(axis=0) if len(self.shard_skipped) else np.zeros(len(SKIP_REASONS), np.int64)
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, totals, strict=True)}

    def describe(self, i: int) -> str:
        """'KEY' in SHARD (byte offset N), for error messages; reads the member's tar header."""
        path, offset = self.shard_paths[int(self.shard[i])], int(self.offset[i])
        try:
            with open(path, "rb") as f:
                f.seek(offset - _BLOCK)
                name = tarfile.TarInfo.frombuf(f.read(_BLOCK), "utf-8", "surrogateescape").name
            key = split_member_name(name)[0] or name  # a long name's header holds its first 100 bytes only
        except (OSError, tarfile.TarError, ValueError):
            key = "?"
        return f"{key!r} in {path} (byte offset {offset})"


def split_member_name(name: str) -> tuple[str | None, str | None]:
    """webdataset's (key, extension) split: the key is the path up to the first '.' of the
    basename; the extension is lower-cased. (None, None) for a name without a '.'."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2).lower()) if match else (None, None)


class _ShardRows:
    """The rows of one shard: (offset, size, label) per sample and the skip counts."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        self.sizes: list[int] = []
        self.labels: list[int] = []
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)


def _index_shard(path: str | Path) -> _ShardRows:
    """Index one shard; never raises for bad data (see SKIP_REASONS)."""
    rows = _ShardRows()
    try:
        file_bytes = os.path.getsize(path)
        f = open(path, "rb")
    except OSError:
        rows.skipped["shards_unreadable"] += 1
        return rows
    with f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except Exception:  # tarfile raises several types on junk; none of them may end a run
            rows.skipped["shards_unreadable"] += 1
            return rows
        key: str | None = None
        members: dict[str, tarfile.TarInfo] = {}
        duplicate = damaged = False

        def finish() -> None:
            if key is None:
                return
            if duplicate:
                rows.skipped["samples_duplicate_member"] += 1
                return
            image = next((members[ext] for ext in IMAGE_EXTENSIONS if ext in members), None)
            cls = members.get("cls")
            if image is None:
                rows.skipped["samples_missing_image"] += 1
            elif image.offset_data + image.size > file_bytes:
                rows.skipped["samples_truncated"] += 1
            elif cls is None or cls.offset_data + cls.size > file_bytes:
                rows.skipped["samples_missing_label"] += 1
            else:
                label = _parse_label(f, cls)
                if label is None:
                    rows.skipped["samples_bad_label"] += 1
                    return
                rows.offsets.append(image.offset_data)
                rows.sizes.append(image.size)
                rows.labels.append(label)

        try:
            while (member := tar.next()) is not None:
                tar.members.clear()  # tarfile keeps every header otherwise; we only stream
                if not member.isreg():
                    continue
                name_key, ext = split_member_name(member.name)
                if name_key is None or _META.match(member.name):
                    continue  # webdataset skips these too (no extension; metadata)
                if name_key != key:
                    finish()
                    key, members, duplicate = name_key, {}, False
                assert ext is not None
                duplicate |= ext in members
                members[ext] = member
            # tarfile ends quietly on a truncated or invalid header past the first; a complete
            # archive ends with a zero block.
            f.seek(tar.offset)
            damaged = f.read(_BLOCK) != bytes(_BLOCK)
        except Exception:  # a damaged header, a read past the end: the rest of the shard is lost
            damaged = True
        finish()
        rows.skipped["shards_damaged"] += int(damaged)
    return rows


def _parse_label(f: BinaryIO, member: tarfile.TarInfo) -> int | None:
    if member.size > _MAX_LABEL_BYTES:
        return None
    try:
        f.seek(member.offset_data)
        return int(f.read(member.size))  # what the streaming loader does with a cls member
    except (OSError, ValueError):
        return None


def _stat(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return _UNKNOWN, _UNKNOWN


def _cache_name(path: str, data_dir: Path) -> str:
    """The shard's name in the cache: relative to the data directory when inside it, so a
    moved directory keeps its cache."""
    try:
        return Path(path).resolve().relative_to(data_dir.resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def _assemble(paths: Sequence[str], parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
              *, reused: int) -> SampleIndex:
    """parts[s] = (offset, size, label, skipped counts) of shard s."""
    counts = [len(p[2]) for p in parts]
    return SampleIndex(
        shard_paths=tuple(paths),
        shard=np.repeat(np.arange(len(paths), dtype=np.int32), counts),
        offset=np.concatenate([p[0] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
        size=np.concatenate([p[1] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
        label=np.concatenate([p[2] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64),
        shard_skipped=np.array([p[3] for p in parts], dtype=np.int64).reshape(len(parts), len(SKIP_REASONS)),
        reused_shards=reused,
    )


def _rows_part(rows: _ShardRows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (np.array(rows.offsets, np.int64), np.array(rows.sizes, np.int64), np.array(rows.labels, np.int64),
            np.array([rows.skipped[r] for r in SKIP_REASONS], np.int64))


def build_index(shards: Sequence[str | Path]) -> SampleIndex:
    """Index ``shards`` in memory, no cache."""
    paths = [str(s) for s in shards]
    return _assemble(paths, [_rows_part(_index_shard(p)) for p in paths], reused=0)


def _read_cache(path: Path) -> dict[str, tuple[int, int, tuple[np.ndarray, ...]]]:
    """name -> (bytes, mtime_ns, part) from a cache file; {} when absent, unreadable or of
    another format (it is then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != INDEX_FORMAT or int(z["version"]) != INDEX_VERSION:
                return {}
            names, sizes, mtimes, rows = z["shard_names"], z["shard_bytes"], z["shard_mtime_ns"], z["shard_rows"]
            skipped, reasons = z["shard_skipped"], tuple(str(r) for r in z["skip_reasons"])
            offset, size, label = z["offset"], z["size"], z["label"]
    except Exception:  # missing, half-foreign or damaged cache: rebuilding is always safe
        return {}
    if reasons != SKIP_REASONS or int(rows.sum()) != len(label):
        return {}
    ends = np.cumsum(rows)
    out = {}
    for s, name in enumerate(names):
        lo, hi = int(ends[s] - rows[s]), int(ends[s])
        out[str(name)] = (int(sizes[s]), int(mtimes[s]), (offset[lo:hi], size[lo:hi], label[lo:hi], skipped[s]))
    return out


def _write_cache(path: Path, names: Sequence[str], stats: Sequence[tuple[int, int]], index: SampleIndex) -> None:
    arrays = {
        "format": np.array(INDEX_FORMAT), "version": np.array(INDEX_VERSION),
        "shard_names": np.array(names, dtype=str), "skip_reasons": np.array(SKIP_REASONS, dtype=str),
        "shard_bytes": np.array([s[0] for s in stats], np.int64),
        "shard_mtime_ns": np.array([s[1] for s in stats], np.int64),
        "shard_rows": np.bincount(index.shard, minlength=len(names)).astype(np.int64),
        "shard_skipped": index.shard_skipped,
        "offset": index.offset, "size": index.size, "label": index.label,
    }
    # write_atomic gives each writer its own temporary: several ranks may build at once
    write_atomic(path, lambda f: np.savez(f, **arrays))


def load_or_build_index(data_dir: str | Path, shards: Sequence[str | Path], *, cache: bool = True) -> SampleIndex:
    """The index of ``shards`` (relative paths are taken from ``data_dir``), reusing
    ``data_dir/tar_index.npz`` for shards whose name, size and mtime_ns are unchanged and
    rewriting it when anything was indexed anew. ``cache=False`` neither reads nor writes it."""
    data_dir = Path(data_dir)
    paths = [str(s if Path(s).is_absolute() else data_dir / s) for s in shards]
    if not cache:
        return build_index(paths)
    cache_path = data_dir / INDEX_NAME
    cached = _read_cache(cache_path)
    names = [_cache_name(p, data_dir) for p in paths]
    stats = [_stat(p) for p in paths]  # before reading: a shard changed meanwhile looks stale next time
    parts, reused = [], 0
    for path, name, stat in zip(paths, names, stats, strict=True):
        hit = cached.get(name)
        if hit is not None and hit[:2] == stat:  # a missing shard stays "missing" until it appears
            parts.append(hit[2])
            reused += 1
        else:
            parts.append(_rows_part(_index_shard(path)))
    index = _assemble(paths, parts, reused=reused)
    if reused < len(paths) or set(cached) != set(names):
        try:
            _write_cache(cache_path, names, stats, index)
        except OSError as exc:
            warnings.warn(f"cannot write the tar index cache {cache_path} ({exc}); keeping the index in memory",
                          stacklevel=2)
    return index
