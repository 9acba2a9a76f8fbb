"""InsightFace's use of RecordIO: which records are images, and their labels.

InsightFace face datasets (MS1MV2/3, Glint360K, WebFace) put a header at key 0: an IRHeader
with flag >= 2, no payload, and label = (first identity-record key, end key). Image records are
keys 1 .. label[0]-1; keys label[0] .. label[1]-1 are identity records (label = the range of
image keys of one identity, no payload). The header is usually written last, so it is not at
file offset 0: it must be found through the .idx file. An image's label is ``header.label``, or
``label[0]`` when the header carries a float array.

Without a .idx file the keys are unknown; the file is scanned in order and records without a
payload (header and identity records) are left out.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from partial_fc.util.progress import Progress
from partial_fc.data.formats.recordio import CorruptRecordError, RecordIOReader, read_idx, unpack

_HEAD_BYTES = 24 + 4 * 8  # IRHeader plus up to 8 float labels; longer ones are read again


@dataclass
class RecIndex:
    """Image records of a .rec file: byte offsets and original labels, in key (or file) order."""

    offsets: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    header_range: tuple[int, int] | None = None
    identity_records: int = 0  # InsightFace identity-range records (metadata, not skipped data)


def _label_of(record_head: bytes, length: int) -> tuple[int, bool]:
    """(original integer label, whether a payload follows) from a record's first bytes and
    its full length."""
    header, _ = unpack(record_head)
    value = header.label if header.flag == 0 else float(header.label[0])  # type: ignore[index]
    if not math.isfinite(value) or value != int(value) or value < 0:
        raise ValueError(f"label {value!r} is not a non-negative integer")
    return int(value), length > 24 + 4 * header.flag


def _head(reader: RecordIOReader, offset: int) -> tuple[bytes, int]:
    data, length, _ = reader.read_at(offset, limit=_HEAD_BYTES)
    if len(data) >= 4:
        flag = int.from_bytes(data[:4], "little")
        if 24 + 4 * flag > _HEAD_BYTES and length > _HEAD_BYTES:
            data, length, _ = reader.read_at(offset, limit=24 + 4 * flag + 1)
    return data, length


def _header_range(reader: RecordIOReader, offset: int) -> tuple[int, int] | None:
    """(lo, hi) if the record at ``offset`` is an InsightFace header record, else None."""
    data, length = _head(reader, offset)
    header, payload = unpack(data)
    if header.flag >= 2 and length == 24 + 4 * header.flag:
        lo, hi = float(header.label[0]), float(header.label[1])  # type: ignore[index]
        if 1 <= lo <= hi and lo == int(lo) and hi == int(hi):
            return int(lo), int(hi)
    return None


def index_rec(rec_path: str | Path, idx_path: str | Path | None, *, show_progress: bool = False) -> RecIndex:
    """Find the image records and their labels, reading only record headers."""
    result = RecIndex()
    with RecordIOReader(rec_path) as reader:
        if idx_path is None:
            progress = Progress(None, desc="index (scan)", unit="rec", enabled=show_progress)
            for offset, item in reader.scan(limit=_HEAD_BYTES):
                progress.update()
                if isinstance(item, CorruptRecordError):
                    result.skipped["corrupt_record"] += 1
                    continue
                _add(result, reader, offset)
            progress.close()
            return result

        index = read_idx(idx_path)
        keys = sorted(index)
        if 0 in index:
            try:
                result.header_range = _header_range(reader, index[0])
            except (CorruptRecordError, ValueError):
                result.skipped["corrupt_header_record"] += 1
        if result.header_range is not None:
            lo, hi = result.header_range
            image_keys = [k for k in keys if 1 <= k < lo]
            result.identity_records = sum(1 for k in keys if lo <= k < hi)
            _count(result.skipped, "keys_outside_header_ranges", sum(1 for k in keys if k >= hi or k < 0))
            _count(result.skipped, "missing_image_keys", (lo - 1) - len(image_keys))  # gaps in the .idx
        else:
            image_keys = keys
        progress = Progress(len(image_keys), desc="index", unit="rec", enabled=show_progress)
        for key in image_keys:
            progress.update()
            offset = index[key]
            if not 0 <= offset < reader.size:
                result.skipped["idx_offset_outside_file"] += 1
                continue
            _add(result, reader, offset)
        progress.close()
    return result


def _count(counter: Counter[str], reason: str, n: int) -> None:
    if n > 0:  # a zero would still show up as a key in the manifest's 'skipped'
        counter[reason] += n


def _add(result: RecIndex, reader: RecordIOReader, offset: int) -> None:
    try:
        data, length = _head(reader, offset)
        label, has_payload = _label_of(data, length)
    except CorruptRecordError:
        result.skipped["corrupt_record"] += 1
        return
    except ValueError:
        result.skipped["bad_irheader"] += 1
        return
    if not has_payload:
        result.skipped["records_without_payload"] += 1
        return
    result.offsets.append(offset)
    result.labels.append(label)
