"""`partial-fc data convert --from rec PREFIX`: InsightFace MXNet RecordIO (PREFIX.rec with,
preferably, PREFIX.idx) to shuffled webdataset shards.

Two passes: the first reads only record headers (labels, which records are images); the second
reads the image records in a seeded random order, since InsightFace files are sorted by
identity and a shard must mix identities. The second pass reads at random offsets: fast on
SSDs and page-cached files, slow on spinning disks.
"""

from __future__ import annotations

import sys
from pathlib import Path

from partial_fc.data.convert.common import ConvertConfig, LoadError, write_shuffled
from partial_fc.data.formats.insightface_rec import index_rec
from partial_fc.data.formats.manifest import ShardManifest
from partial_fc.data.formats.recordio import CorruptRecordError, RecordIOReader, unpack


def rec_paths(prefix: str | Path) -> tuple[Path, Path | None]:
    """(PREFIX.rec, PREFIX.idx or None); PREFIX may be given with or without '.rec'."""
    prefix = Path(prefix)
    rec = prefix if prefix.suffix == ".rec" else prefix.with_name(prefix.name + ".rec")
    if not rec.exists():
        raise FileNotFoundError(f"no RecordIO file at {rec} (pass PREFIX for PREFIX.rec + PREFIX.idx)")
    idx = rec.with_suffix(".idx")
    return rec, (idx if idx.exists() else None)


def convert_rec(prefix: str | Path, config: ConvertConfig) -> ShardManifest:
    rec, idx = rec_paths(prefix)
    if idx is None and config.show_progress:
        print(f"note: {rec.with_suffix('.idx')} not found; scanning {rec} in order (keys unknown)", file=sys.stderr)
    index = index_rec(rec, idx, show_progress=config.show_progress)
    if not index.offsets:
        raise ValueError(f"{rec}: no image records found (skipped: {dict(index.skipped)})")
    originals = sorted(set(index.labels))
    label_map = {str(original): dense for dense, original in enumerate(originals)}
    dense = [label_map[str(original)] for original in index.labels]
    reader = RecordIOReader(rec)

    def load(i: int) -> bytes:
        try:
            record, _, _ = reader.read_at(index.offsets[i])
            return unpack(record)[1]
        except CorruptRecordError:
            raise LoadError("corrupt_record") from None
        except ValueError:
            raise LoadError("bad_irheader") from None

    source = {"kind": "rec", "path": str(rec.resolve()), "idx": str(idx.resolve()) if idx else None}
    if index.header_range is not None:
        source["header_range"] = list(index.header_range)
        source["identity_records"] = index.identity_records
    try:
        return write_shuffled(config, labels=dense, load=load, label_map=label_map, source=source, skipped=index.skipped)
    finally:
        reader.close()
