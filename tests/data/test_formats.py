"""The on-disk formats: shards complete-or-absent, the manifest, the pair file; the baseline."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from partial_fc.data.baseline import pixel_baseline, pixel_pair_scores
from partial_fc.data.formats.manifest import MANIFEST_NAME, ShardManifest, load_manifest, write_manifest
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.formats.pairs import PairSet, save_pairs
from partial_fc.data.formats.shards import ShardInfo, ShardWriter
from partial_fc.metrics.verification import verify_scores
from tests.data.helpers import image, jpeg


def test_shard_is_tmp_until_closed_and_dropped_on_error(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path, max_samples=2)
    writer.write(key="a", jpeg=jpeg(0), label=1)
    assert [p.name for p in tmp_path.iterdir()] == ["train-000000.tar.tmp"]  # nothing looks finished
    writer.write(key="b", jpeg=jpeg(1), label=2)
    writer.write(key="c", jpeg=jpeg(2), label=3)  # starts shard 1, finishing shard 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar", "train-000001.tar.tmp"]
    with pytest.raises(RuntimeError), writer:
        raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train-000000.tar"]
    with pytest.raises(ValueError, match=r"must not contain '\.' or '/'.*'x\.y'"):
        ShardWriter(tmp_path / "k").write(key="x.y", jpeg=b"", label=0)


def test_shard_bytes_equal_what_tarfile_writes(tmp_path: Path) -> None:
    # The writer formats USTAR headers itself; the oracle is the standard library's tarfile.
    samples = [(f"{k:04d}", jpeg(k), k * 37) for k in range(5)] + [("x", b"", 0), ("big", b"\1" * 1024, 12)]
    with ShardWriter(tmp_path / "ours") as writer:
        for key, data, label in samples:
            writer.write(key=key, jpeg=data, label=label)
    reference = tmp_path / "reference.tar"
    with tarfile.open(reference, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, data, label in samples:
            for name, payload in ((f"{key}.jpg", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(payload), 0, 0o444
                tar.addfile(info, io.BytesIO(payload))
    assert (tmp_path / "ours" / "train-000000.tar").read_bytes() == reference.read_bytes()
    assert writer.shards[0].num_bytes == reference.stat().st_size


def test_shards_are_byte_deterministic(tmp_path: Path) -> None:
    for name in ("one", "two"):
        with ShardWriter(tmp_path / name) as w:
            for k in range(3):
                w.write(key=f"{k}", jpeg=jpeg(k), label=k)
    assert (tmp_path / "one" / "train-000000.tar").read_bytes() == (tmp_path / "two" / "train-000000.tar").read_bytes()


def _manifest() -> ShardManifest:
    return ShardManifest(num_classes=2, num_samples=5, shards=(ShardInfo("a.tar", 2, 10), ShardInfo("b.tar", 3, 10)),
                         label_map={"x": 0, "y": 1}, source={"kind": "test"}, skipped={"bad": 1})  # fmt: skip


def test_manifest_round_trip_and_errors(tmp_path: Path) -> None:
    write_manifest(tmp_path, _manifest())
    assert load_manifest(tmp_path) == _manifest()
    data = json.loads((tmp_path / MANIFEST_NAME).read_text())
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**data, "version": 99}))
    with pytest.raises(ValueError, match="version 99 is not supported, expected 1"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({**data, "num_clases": 3}))
    with pytest.raises(ValueError, match=r"unknown keys \['num_clases'\]; valid keys are"):
        load_manifest(tmp_path)
    with pytest.raises(ValueError, match="num_samples is 6 but its shards hold 5"):
        ShardManifest(num_classes=2, num_samples=6, shards=_manifest().shards, label_map={}, source={})
    with pytest.raises(FileNotFoundError, match="unfinished or foreign"):
        load_manifest(tmp_path / "nowhere")


@pytest.mark.parametrize("raw", [False, True])
def test_pairs_round_trip(tmp_path: Path, raw: bool) -> None:
    images = np.stack([image(k) for k in range(4)]) if raw else [jpeg(k) for k in range(4)]
    pairs = PairSet(name="t", images=images, issame=np.array([True, False]), meta={"from": "test"})
    path = save_pairs(tmp_path / "t.pairs.npz", pairs)
    back = load_pairs(path)
    assert back.name == "t" and back.meta == {"from": "test"} and back.issame.tolist() == [True, False]
    if raw:
        np.testing.assert_array_equal(back.images, images)
    else:
        assert back.images == images
    with np.load(path, allow_pickle=False) as z:  # readable with pickling disabled
        assert str(z["format"]) == "partial-fc-pairs"


def test_pairs_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 images for 2 pairs, expected 4"):
        PairSet(name="t", images=[b"", b"", b""], issame=np.array([True, False]))
    np.savez(tmp_path / "other.npz", format=np.array("something-else"))
    with pytest.raises(ValueError, match="format is 'something-else', expected 'partial-fc-pairs'"):
        load_pairs(tmp_path / "other.npz")


def test_pixel_baseline_is_the_shared_kfold_protocol() -> None:
    # Pair 0 identical images (cosine 1), pair 1 an image and its negative (cosine -1), so the
    # raw-pixel scores are known exactly; the accuracy must be the one k-fold protocol's on them.
    base = [image(k).astype(np.int16) for k in range(10)]
    images, issame = [], []
    for k in range(10):
        other = base[k] if k % 2 == 0 else 255 - base[k]
        images += [base[k].astype(np.uint8), other.astype(np.uint8)]
        issame.append(k % 2 == 0)
    pairs = PairSet(name="t", images=np.stack(images), issame=np.array(issame))
    scores = pixel_pair_scores(pairs)
    # Centring makes 255 - x the exact negative of x: cosine -1. The features are float32 and the
    # cosine sums 32*32*3 products, so rounding reaches a few 1e-6 (sqrt(3072) * 6e-8 each).
    np.testing.assert_allclose(scores, np.where(issame, 1.0, -1.0), atol=1e-5)
    got = pixel_baseline(pairs, n_folds=5)
    want = verify_scores(scores, issame, n_folds=5)
    assert got == want and got.accuracy_mean == 1.0 and got.n_folds == 5
    # The grid's tie-break (the strictest best threshold): cos 0.995, not a midpoint such as 0.
    assert got.fold_thresholds == pytest.approx((0.995,) * 5, abs=1e-12)
