"""Synthetic identities: byte-identical for a seed, independent of workers and batching."""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from partial_fc.data import cli
from partial_fc.data.formats.manifest import load_manifest
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.synth.config import SynthConfig
from partial_fc.data.synth.generate import generate, heldout_pairs, noise_bank
from partial_fc.data.synth.params import identity_uniforms, image_uniforms
from partial_fc.data.synth.render import render_faces


def _small(out: Path, **kw) -> SynthConfig:  # type: ignore[no-untyped-def]
    base = dict(identities=6, images_per_identity=3, size=64, seed=5, heldout_identities=4, pairs=10, shard_samples=7)
    return SynthConfig(out_dir=out, **{**base, **kw})


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_same_bytes_any_worker_count(tmp_path: Path) -> None:
    generate(_small(tmp_path / "a"), show_progress=False)
    generate(_small(tmp_path / "b"), show_progress=False)
    generate(_small(tmp_path / "c", workers=2), show_progress=False)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert sorted(a) == ["heldout.pairs.npz", "manifest.json", "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert a == b  # shards, pairs and manifest byte for byte
    assert a == c
    generate(_small(tmp_path / "d", seed=6), show_progress=False)
    d = _files(tmp_path / "d")
    assert all(a[name] != d[name] for name in a if name.endswith(".tar"))


def test_images_do_not_depend_on_batch_composition() -> None:
    # Patches are sized by the largest feature in the batch: a feature clipped by its patch
    # would show up here as an image that changes with its batch-mates.
    ids, imgs = np.array([3, 3, 8, 1, 0] + list(range(20, 39))), np.array([0, 1, 0, 7, 2] + list(range(19)))
    bank = noise_bank(1, 48)
    together, q = render_faces(identity_uniforms(1, ids), image_uniforms(1, ids, imgs), size=48, noise_bank=bank)
    for k in range(len(ids)):
        alone, qk = render_faces(identity_uniforms(1, ids[k : k + 1]), image_uniforms(1, ids[k : k + 1], imgs[k : k + 1]),
                                 size=48, noise_bank=bank)  # fmt: skip
        np.testing.assert_array_equal(alone[0], together[k])
        assert qk[0] == q[k]
    assert not np.array_equal(together[0], together[1])  # same identity, different nuisances


def test_labels_heldout_and_pairs(tmp_path: Path) -> None:
    cfg = _small(tmp_path)
    generate(cfg, show_progress=False)
    manifest = load_manifest(tmp_path)
    assert manifest.num_classes == 6 and manifest.num_samples == 18
    assert [s.num_samples for s in manifest.shards] == [7, 7, 4]
    labels = []
    for shard in manifest.shard_paths(tmp_path):
        with tarfile.open(shard) as tar:
            labels += [int(tar.extractfile(m).read()) for m in tar if m.name.endswith(".cls")]
    assert sorted(labels) == sorted(list(range(6)) * 3)  # every identity K times, nothing held out
    pairs = load_pairs(tmp_path / "heldout.pairs.npz")
    assert pairs.num_pairs == 10 and int(pairs.issame.sum()) == 5
    assert pairs.image(0).shape == (64, 64, 3)
    ids, imgs, issame = heldout_pairs(cfg)
    np.testing.assert_array_equal(issame, pairs.issame)
    assert ids.min() >= 6 and ids.max() < 10  # held-out identities only
    assert np.all((ids[0::2] == ids[1::2]) == issame)
    assert len(set(zip(ids.tolist(), imgs.tolist()))) == 20  # no image used twice
    baseline = manifest.extra["pairs"]["raw_pixel_baseline"]
    assert 0.0 <= baseline["accuracy"] <= 1.0


def test_config_errors_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synth.pairs must be a non-negative even number .* got 7"):
        _small(tmp_path, pairs=7)
    with pytest.raises(ValueError, match=r"synth.size must be in \[32, 512\] pixels, got 8"):
        _small(tmp_path, size=8)
    with pytest.raises(ValueError, match="needs heldout_identities >= 2"):
        _small(tmp_path, heldout_identities=1)


def test_cli_synth_and_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    out = tmp_path / "s"
    args = parser.parse_args(["synth", "--out", str(out), "--identities", "3", "--images-per-identity", "2",
                              "--size", "48", "--seed", "1", "--heldout-identities", "3", "--pairs", "20", "--quiet"])  # fmt: skip
    assert cli.run(args) == 0
    assert cli.run(parser.parse_args(["baseline", str(out / "heldout.pairs.npz")])) == 0
    text = capsys.readouterr().out
    assert "wrote 6 training images" in text and "raw-pixel verification accuracy" in text
    settings = json.loads((out / "manifest.json").read_text())["extra"]["settings"]
    assert settings["identities"] == 3 and settings["size"] == 48
