"""The on-disk formats: shards complete-or-absent, the manifest, the pair file; the baseline."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from partial_fc.data.baseline import kfold_accuracy
from partial_fc.data.formats.manifest import MANIFEST_NAME, ShardManifest, load_manifest, write_manifest
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.formats.pairs import PairSet, save_pairs
from partial_fc.data.formats.shards import ShardInfo, ShardWriter
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


def test_kfold_accuracy_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    issame = rng.permutation(np.arange(60) < 30)
    scores = rng.normal(size=60) + 0.8 * issame
    mean, _ = kfold_accuracy(scores, issame, folds=10)
    # Oracle: for each fold, try every threshold between consecutive training scores.
    accs = []
    for f in range(10):
        test = np.zeros(60, dtype=bool)
        test[6 * f : 6 * f + 6] = True
        candidates = np.concatenate([[-np.inf], np.sort(scores[~test])])
        train_acc = [np.mean((scores[~test] >= t) == issame[~test]) for t in candidates]
        best = candidates[int(np.argmax(train_acc))]
        # the implementation thresholds at the midpoint below the chosen score; same decisions on train
        below = scores[~test][scores[~test] < best].max() if np.any(scores[~test] < best) else best - 1.0
        accs.append(np.mean((scores[test] > (below + best) / 2) == issame[test]))
    assert mean == pytest.approx(np.mean(accs))
    assert kfold_accuracy(np.where(issame, 1.0, 0.0), issame)[0] == 1.0
    assert kfold_accuracy(np.zeros(60), issame)[0] == pytest.approx(0.5, abs=0.15)


def test_pair_batches_in_pair_order(tmp_path: Path) -> None:
    from partial_fc.data.pair_loader import iter_pair_batches

    raw = np.stack([image(k) for k in range(6)])
    pairs = PairSet(name="t", images=[jpeg(k, quality=100) for k in range(6)], issame=np.array([True, False, True]))
    batches = list(iter_pair_batches(pairs, batch_size=4))
    assert [tuple(b.shape) for b in batches] == [(4, 3, 32, 32), (2, 3, 32, 32)]
    images = np.concatenate([((b + 1) * 127.5).round().permute(0, 2, 3, 1).numpy() for b in batches])
    assert np.abs(images - raw).mean() < 2.0  # decoded JPEGs (q100) of the images, in order
    flipped = np.concatenate([b.numpy() for b in iter_pair_batches(pairs, batch_size=4, flip=True)])
    np.testing.assert_array_equal(flipped, np.concatenate([b.numpy() for b in batches])[..., ::-1])
    resized = next(iter_pair_batches(pairs, batch_size=2, image_size=16))
    assert resized.shape == (2, 3, 16, 16)
