"""Shards checked against their manifest before a loader reads them, and the errors a loader
raises as one line.

The manifest records each shard's byte size and sample count when it was written. A shard
that is absent is *missing*: it is left out and its samples are counted as lost. A shard whose
size differs (truncated mid-member or at a member boundary, emptied, 0 bytes, rewritten) is
*damaged*: its header chain is read once (tar_index, nothing decoded) to count what is still
readable, the readable samples are used and the rest are counted as lost. Every such shard is
named. A run with nothing readable left is a DataError naming the first file.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field

from partial_fc.data.formats.tar_index import build_index


class DataError(ValueError):
    """Data that training cannot go on with (a label outside the class range, nothing readable):
    one line naming the file and the sample, raised in the training process even when a worker
    found it."""


class DataWarning(UserWarning):
    """Data lost but skipped: missing or damaged shards (the run goes on)."""


def warn_data(message: str) -> None:
    """A DataWarning shown at the first caller outside this package (the trainer's line that
    built or iterated the loader), whatever the depth of the loader's own calls."""
    here, frame, level = os.path.dirname(__file__), sys._getframe(1), 2
    while frame.f_back is not None and os.path.dirname(frame.f_code.co_filename) == here:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DataWarning, stacklevel=level)


@dataclass
class ShardCheck:
    """``present``: indices of the shards that exist; ``problems``: path -> what is wrong."""

    present: list[int]
    counted: bool = True  # the manifest's sample counts are known
    shards_missing: int = 0
    shards_damaged: int = 0
    samples_lost: int = 0
    samples_readable: int = 0
    problems: dict[str, str] = field(default_factory=dict)

    def summary(self, total: int) -> str:
        """One line for the console: counts, then the shards named (the first few)."""
        named = "; ".join(f"{path}: {why}" for path, why in list(self.problems.items())[:5])
        more = f"; and {len(self.problems) - 5} more" if len(self.problems) > 5 else ""
        lost = f", {self.samples_lost:,} samples lost ({self.samples_readable:,} left)" if self.counted else ""
        return f"{self.shards_missing} of {total} shards missing, {self.shards_damaged} damaged{lost}: {named}{more}"


def check_shards(shards: tuple[str, ...], *, samples: tuple[int, ...] | None,
                 sizes: tuple[int, ...] | None) -> ShardCheck:
    """Compare each shard with the manifest's record (``samples``/``sizes`` per shard; None when
    the shards come without a manifest: then only existence is checked)."""
    check = ShardCheck(present=[], counted=samples is not None)
    for i, path in enumerate(shards):
        expected = None if samples is None else samples[i]
        try:
            size = os.path.getsize(path)
        except OSError:
            check.shards_missing += 1
            check.samples_lost += expected or 0
            check.problems[path] = "missing" + (f", {expected} samples lost" if expected is not None else "")
            continue
        check.present.append(i)
        if sizes is None or size == sizes[i]:
            check.samples_readable += expected or 0
            continue
        readable = len(build_index([path]))  # headers only, this shard only
        lost = max(0, (expected or 0) - readable)
        check.shards_damaged += 1
        check.samples_lost += lost
        check.samples_readable += readable
        check.problems[path] = (f"{size:,} bytes, the manifest says {sizes[i]:,}: {readable} of {expected} samples "
                                f"readable, {lost} lost")
    return check


def report_shards(check: ShardCheck, shards: tuple[str, ...], *, rank: int) -> None:
    """Raise a DataError when nothing is left to read; otherwise warn (rank 0: every rank found
    the same) when anything is missing or damaged."""
    if not check.present:
        raise DataError(f"none of the {len(shards)} shards exists (first: {shards[0]}); is data.train the right "
                        "directory, and is it mounted on this node?")
    if check.samples_readable == 0 and check.shards_damaged == len(check.present):
        first = next(iter(check.problems))
        raise DataError(f"no shard has a readable sample (first: {first}: {check.problems[first]})")
    if check.problems and rank == 0:
        warn_data(f"data: {check.summary(len(shards))}")


def audit(data_dir: str, *, decode: bool = False) -> dict[str, list[str]]:
    """Everything wrong with a data directory against its manifest, one line each, by kind
    ("shard", "label", "image"): missing and damaged shards, shards holding fewer samples than
    listed, labels outside [0, num_classes), and with ``decode`` images that do not decode
    (libjpeg warnings included). Reads every tar header (the cached tar index) and, with
    ``decode``, every image: what the loaders otherwise find only when they reach it."""
    import numpy as np

    from partial_fc.data.formats.images import CorruptImageError, decode_rgb
    from partial_fc.data.formats.manifest import load_manifest
    from partial_fc.data.formats.tar_index import load_or_build_index

    manifest = load_manifest(data_dir)
    shards = tuple(manifest.shard_paths(data_dir))
    check = check_shards(shards, samples=tuple(s.num_samples for s in manifest.shards),
                         sizes=tuple(s.num_bytes for s in manifest.shards))
    found: dict[str, list[str]] = {"shard": [f"{p}: {why}" for p, why in check.problems.items()],
                                   "label": [], "image": []}
    index = load_or_build_index(data_dir, [shards[i] for i in check.present])
    indexed = np.bincount(index.shard, minlength=len(check.present))
    for s, i in enumerate(check.present):
        if shards[i] not in check.problems and indexed[s] < manifest.shards[i].num_samples:
            found["shard"].append(f"{shards[i]}: {indexed[s]} of {manifest.shards[i].num_samples} samples readable")
    for row in np.flatnonzero((index.label < 0) | (index.label >= manifest.num_classes)):
        found["label"].append(f"label {int(index.label[row])} of sample {index.describe(int(row))} is outside "
                              f"[0, {manifest.num_classes})")
    if decode:
        for row in range(len(index)):
            with open(index.shard_paths[int(index.shard[row])], "rb") as f:
                f.seek(int(index.offset[row]))
                data = f.read(int(index.size[row]))
            try:
                decode_rgb(data)
            except CorruptImageError as err:
                found["image"].append(f"sample {index.describe(row)}: {err}")
    return found
