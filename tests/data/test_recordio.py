"""The RecordIO reader and converter on files this test writes byte by byte from the format
(dmlc-core's RecordIOWriter and InsightFace's layout), independently of the reader's code."""

from __future__ import annotations

import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest

from partial_fc.data.convert.common import ConvertConfig
from partial_fc.data.convert.rec import convert_rec
from partial_fc.data.formats.insightface_rec import index_rec
from partial_fc.data.formats.manifest import load_manifest
from partial_fc.data.formats.recordio import RecordIOReader, read_idx, unpack
from tests.data.helpers import jpeg

MAGIC = struct.pack("<I", 0xCED7230A)


def write_record(f, payload: bytes) -> int:
    """dmlc RecordIOWriter::WriteRecord: split where the payload holds the magic at a 4-aligned
    position (dropping those 4 bytes), cflag 1/2/3 for first/middle/last, pad the last part."""
    start = f.tell()
    parts, begin = [], 0
    for i in range(0, len(payload) // 4 * 4, 4):
        if payload[i : i + 4] == MAGIC:
            parts.append(payload[begin:i])
            begin = i + 4
    parts.append(payload[begin:])
    for k, part in enumerate(parts):
        cflag = 0 if len(parts) == 1 else (1 if k == 0 else (3 if k == len(parts) - 1 else 2))
        f.write(MAGIC + struct.pack("<I", (cflag << 29) | len(part)) + part)
        f.write(b"\0" * ((-len(part)) % 4))
    return start


def irheader(label: float | list[float], image: bytes = b"", id1: int = 0) -> bytes:
    if isinstance(label, list):
        return struct.pack("<IfQQ", len(label), 0.0, id1, 0) + struct.pack(f"<{len(label)}f", *label) + image
    return struct.pack("<IfQQ", 0, label, id1, 0) + image


def jpeg_with_magic(seed: int, copies: int) -> bytes:
    """A valid JPEG whose COM segment holds the magic `copies` times at offsets that are
    4-aligned within a record payload (the payload starts with the 24-byte IRHeader)."""
    body = jpeg(seed)
    # The comment starts after SOI(2) + marker(2) + length(2), at payload offset 24 + 6.
    comment = bytearray(b"x" * ((-(24 + 6)) % 4))
    for _ in range(copies):
        comment += MAGIC + b"abcd"
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + bytes(comment)
    return body[:2] + segment + body[2:]


@pytest.fixture
def insightface_rec(tmp_path: Path) -> dict:
    """Image keys 1..8, identity records 9..11, header record 0 written last; key 4 is left
    out of the .idx (a gap) and key 6's .idx offset points into the middle of a record."""
    # identities by original label: 10 -> keys 1,2,3 ; 20 -> 4,5,6 ; 35 -> 7,8
    labels = {1: 10.0, 2: [10.0, 0.5], 3: 10.0, 4: 20.0, 5: [20.0, 1.0, 2.0], 6: 20.0, 7: 35.0, 8: [35.0, 9.0]}
    images = {k: jpeg(k) for k in labels}
    images[5] = jpeg_with_magic(5, copies=2)  # split into 3 parts: cflag 1, 2, 3
    offsets: dict[int, int] = {}
    rec = tmp_path / "train.rec"
    with open(rec, "wb") as f:
        for key in sorted(labels):
            offsets[key] = write_record(f, irheader(labels[key], images[key], id1=key))
        id_ranges = {9: [1.0, 4.0], 10: [4.0, 7.0], 11: [7.0, 9.0]}
        for key, rng in id_ranges.items():
            offsets[key] = write_record(f, irheader(rng))
        offsets[0] = write_record(f, irheader([9.0, 12.0]))  # header: not at offset 0
    idx = {k: v for k, v in offsets.items() if k != 4}
    idx[6] = offsets[6] + 8  # corrupt: not a record start
    with open(tmp_path / "train.idx", "w") as f:
        for key in sorted(idx, reverse=True):  # order of lines does not matter
            f.write(f"{key}\t{idx[key]}\n")
    return {"prefix": tmp_path / "train", "labels": labels, "images": images, "offsets": offsets}


def test_split_record_rejoined_with_magic(insightface_rec: dict) -> None:
    rec = insightface_rec
    assert rec["images"][5].count(MAGIC) == 2
    with RecordIOReader(str(rec["prefix"]) + ".rec") as reader:
        record, length, _ = reader.read_at(rec["offsets"][5])
    header, image = unpack(record)
    assert image == rec["images"][5]  # magic bytes put back between the three parts
    assert length == len(record)
    assert header.flag == 3 and header.label.tolist() == [20.0, 1.0, 2.0] and header.id == 5


def test_split_record_on_disk_has_three_parts(insightface_rec: dict) -> None:
    # Guards the test's own writer: the record must really be split for the test above to mean anything.
    data = Path(str(insightface_rec["prefix"]) + ".rec").read_bytes()
    off = insightface_rec["offsets"][5]
    flags = []
    while True:
        magic, lrec = struct.unpack_from("<II", data, off)
        assert magic == 0xCED7230A
        flags.append(lrec >> 29)
        off += 8 + ((lrec & ((1 << 29) - 1)) + 3) // 4 * 4
        if flags[-1] in (0, 3):
            break
    assert flags == [1, 2, 3]


def test_index_follows_insightface_header_and_idx_gaps(insightface_rec: dict) -> None:
    rec = insightface_rec
    index = index_rec(str(rec["prefix"]) + ".rec", str(rec["prefix"]) + ".idx")
    assert index.header_range == (9, 12)
    # key 4: missing from the idx; key 6: bad offset; identity records 9-11 are not images
    expected_keys = [1, 2, 3, 5, 7, 8]
    assert index.offsets == [rec["offsets"][k] for k in expected_keys]
    assert index.labels == [10, 10, 10, 20, 35, 35]  # float labels; label[0] of label arrays
    assert index.skipped["missing_image_keys"] == 1
    assert index.skipped["corrupt_record"] == 1
    assert index.identity_records == 3
    assert "keys_outside_header_ranges" not in index.skipped  # no zero counts


def test_read_idx_reports_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "a.idx").write_text("1\t0\n\n2\tx\n")
    with pytest.raises(ValueError, match=r"a.idx:3: key and offset must be integers"):
        read_idx(tmp_path / "a.idx")


def test_scan_without_idx_skips_metadata_and_resyncs(insightface_rec: dict, tmp_path: Path) -> None:
    rec = insightface_rec
    src = Path(str(rec["prefix"]) + ".rec").read_bytes()
    # Damage record 2's magic: the scan must report it and find record 3 onwards again.
    broken = bytearray(src)
    broken[rec["offsets"][2] : rec["offsets"][2] + 4] = b"JUNK"
    path = tmp_path / "noidx.rec"
    path.write_bytes(bytes(broken))
    index = index_rec(path, None)
    assert index.labels == [10, 10, 20, 20, 20, 35, 35]  # keys 1, 3, 4, 5, 6, 7, 8
    assert index.skipped["corrupt_record"] == 1
    assert index.skipped["records_without_payload"] == 4  # 3 identity records + the header


def test_convert_rec_dense_labels_shuffled_bytes_intact(insightface_rec: dict, tmp_path: Path) -> None:
    rec = insightface_rec
    out = tmp_path / "shards"
    manifest = convert_rec(rec["prefix"], ConvertConfig(out_dir=out, shard_size_bytes=1 << 16, show_progress=False))
    assert manifest.label_map == {"10": 0, "20": 1, "35": 2}
    assert manifest.num_classes == 3 and manifest.num_samples == 6
    assert manifest.skipped["corrupt_record"] == 1 and manifest.skipped["missing_image_keys"] == 1
    assert load_manifest(out) == manifest
    seen = {}
    for shard in manifest.shard_paths(out):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar}
        for name, data in members.items():
            if name.endswith(".jpg"):
                seen[data] = int(members[name[:-4] + ".cls"])
    expected = {rec["images"][k]: {10: 0, 20: 1, 35: 2}[int(np.atleast_1d(rec["labels"][k])[0])] for k in (1, 2, 3, 5, 7, 8)}
    assert seen == expected  # every image byte-identical (JPEG is not re-encoded), densely labelled
