"""eval / embed / export / viz commands on a tiny trained run (real shards, real checkpoint)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from partial_fc.cli import main as cli_main
from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.data.loaders.worker_stream import to_float_chw
from partial_fc.eval import summarize_roc, verify_interleaved
from partial_fc.eval.align import ARCFACE_TEMPLATE_112
from partial_fc.eval.backbone import load_backbone
from partial_fc.eval.sources import open_source
from partial_fc.metrics.verification import flip_sum_normalize, pair_cosine

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def _png(path: Path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert image.std() > 5, f"{path} looks blank"
    return image


def test_eval_pairs_prints_table_and_json_equal_to_library(run_dir, data_dir, tmp_path, capsys):
    pairs_path = data_dir / "heldout.pairs.npz"
    out = tmp_path / "eval.json"
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--pairs", str(pairs_path), "--json", str(out),
                     "--plot-dir", str(tmp_path / "plots"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic-heldout" in printed and "accuracy %" in printed and "TAR@1e-1" in printed and "n/a" in printed
    doc = json.loads(out.read_text())
    assert doc["step"] == 2 and doc["flip"] is True
    got = doc["pairs"]["synthetic-heldout"]
    assert set(got) == {"verification", "roc"}
    assert 0.0 <= got["verification"]["accuracy_mean"] <= 1.0
    # The oracle: embeddings of one direct forward pass here, metrics from the library.
    model, _, _ = load_backbone(run_dir)
    pairs = load_pairs(pairs_path)
    images = np.stack([pairs.image(k) for k in range(2 * pairs.num_pairs)])
    with torch.no_grad():
        emb = model(to_float_chw(images)).numpy()
        flip = model(to_float_chw(images[:, :, ::-1])).numpy()
    ver = verify_interleaved(emb, pairs.issame, flipped=flip)
    unit = flip_sum_normalize(emb, flip)
    roc = summarize_roc(pair_cosine(unit[0::2], unit[1::2]), pairs.issame)
    # JSON rounds to 6 significant digits; float32 batch composition may move a score ~1e-7.
    assert got["verification"]["accuracy_mean"] == pytest.approx(ver.accuracy_mean, rel=1e-5)
    assert got["verification"]["fold_accuracies"] == pytest.approx(list(ver.fold_accuracies), rel=1e-5)
    assert got["roc"]["auc"] == pytest.approx(roc.auc, rel=1e-5)
    assert got["roc"]["eer"] == pytest.approx(roc.eer, rel=1e-5)
    tars = {r["far_target"]: r["tar"] for r in got["roc"]["tar_at_far"]}
    assert tars[1e-6] is None and tars[0.1] == pytest.approx(roc.tar(0.1), rel=1e-5)
    _png(tmp_path / "plots" / "roc.png")
    _png(tmp_path / "plots" / "scores.png")


def test_eval_json_dash_is_the_document_on_stdout(run_dir, data_dir, tmp_path, capsys):
    # The project-wide --json PATH rule: '-' puts only the JSON on stdout (tables go to stderr).
    pairs_path = data_dir / "heldout.pairs.npz"
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--pairs", str(pairs_path), "--json", "-", "--no-flip",
                     "--quiet"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["flip"] is False and set(doc["pairs"]) == {"synthetic-heldout"}
    assert "accuracy %" in captured.err and not (tmp_path / "-").exists() and not Path("-").exists()


def test_eval_gallery_probe_split(run_dir, data_dir, tmp_path):
    out = tmp_path / "ident.json"
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--gallery-probe", str(data_dir), "--json", str(out),
                     "--quiet"]) == 0
    r = json.loads(out.read_text())["identification"]["data"]
    # 24 identities x 8 images: 6 (floor(0.25 * 24)) held out as non-mated, 18 with 1 gallery image.
    assert (r["n_gallery"], r["n_mated_probes"], r["n_nonmated_probes"]) == (18, 18 * 7, 6 * 8)
    assert 0.0 <= r["rank1"] <= 1.0 and r["cmc"][-1] == 1.0


def _tiny_ijb(root: Path, data_dir: Path) -> None:
    """6 images, 3 templates, 3 pairs; landmarks are the template scaled to the crop, so the
    alignment is the identity."""
    (root / "meta").mkdir(parents=True)
    (root / "loose_crop").mkdir()
    pairs = load_pairs(data_dir / "heldout.pairs.npz")
    lmk = " ".join(f"{v:.4f}" for v in (ARCFACE_TEMPLATE_112 * 32 / 112).ravel())
    faces, points = [], []
    for i in range(6):
        Image.fromarray(pairs.image(i)).save(root / "loose_crop" / f"{i + 1}.jpg")
        faces.append(f"{i + 1}.jpg {i // 2 + 1} {i}")
        points.append(f"{i + 1}.jpg {lmk} 0.9")
    (root / "meta" / "ijbc_face_tid_mid.txt").write_text("\n".join(faces) + "\n")
    (root / "meta" / "ijbc_name_5pts_score.txt").write_text("\n".join(points) + "\n")
    (root / "meta" / "ijbc_template_pair_label.txt").write_text("1 2 1\n1 3 0\n2 3 0\n")


def test_eval_ijb_folder(run_dir, data_dir, tmp_path, capsys):
    _tiny_ijb(tmp_path / "IJBC", data_dir)
    out = tmp_path / "ijb.json"
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--ijb-root", str(tmp_path / "IJBC"), "--json", str(out),
                     "--quiet"]) == 0
    r = json.loads(out.read_text())["ijb"]["IJBC"]
    assert (r["n_images"], r["n_templates"], r["n_pairs"]) == (6, 3, 3)
    assert 0.0 <= r["roc"]["auc"] <= 1.0
    (tmp_path / "IJBC" / "loose_crop" / "4.jpg").unlink()
    assert cli_main(["eval", "--checkpoint", str(run_dir), "--ijb-root", str(tmp_path / "IJBC"), "--quiet"]) == 2
    assert "missing" in capsys.readouterr().err


def test_embed_writes_unit_rows_matching_a_direct_forward(run_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    assert cli_main(["embed", "--checkpoint", str(run_dir), "--input", str(data_dir), "--out", str(out),
                     "--batch-size", "7", "--quiet"]) == 0
    assert "flip on" in capsys.readouterr().out  # as in eval: flip test-time augmentation unless --no-flip
    emb = np.load(out / "embeddings.npy")
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert emb.dtype == np.float32 and emb.shape == (192, 32) and len(index) == 192
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    assert all(isinstance(r["label"], int) and r["source"].startswith("train-") for r in index)
    model, _, _ = load_backbone(run_dir)
    images = np.stack([im for _, im in zip(range(10), open_source(data_dir).images())])
    with torch.no_grad():
        plain = model(to_float_chw(images)).numpy().astype(np.float64)
        mirrored = model(to_float_chw(images[:, :, ::-1])).numpy()
    direct = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    np.testing.assert_allclose(emb[:10], direct, atol=1e-5)  # float32 forward, different batch split
    assert sorted(p.name for p in out.iterdir()) == ["embeddings.npy", "index.jsonl"]  # no temp files left

    assert cli_main(["embed", "--checkpoint", str(run_dir), "--input", str(data_dir), "--out", str(out),
                     "--no-flip", "--quiet"]) == 0
    assert "flip off" in capsys.readouterr().out
    plain /= np.linalg.norm(plain, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(out / "embeddings.npy")[:10], plain, atol=1e-5)


@pytest.mark.skipif(not HAS_ORT, reason="onnx/onnxruntime not installed")
def test_export_onnx_parity(run_dir, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    assert cli_main(["export", "--checkpoint", str(run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    model, _, _ = load_backbone(run_dir)
    x = torch.rand(3, 3, 32, 32) * 2 - 1  # a batch size the exporter did not test
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() < 1e-4


def test_export_torchscript_parity(run_dir, tmp_path):
    out = tmp_path / "model.pt"
    assert cli_main(["export", "--checkpoint", str(run_dir), "--format", "torchscript", "--out", str(out)]) == 0
    model, _, _ = load_backbone(run_dir)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(out))(x), model(x), rtol=0, atol=1e-5)


def test_viz_curves_and_margins_pngs(run_dir, tmp_path, capsys):
    assert cli_main(["viz", "curves", "--checkpoint", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    assert "(3 panels)" in capsys.readouterr().out
    _png(tmp_path / "c.png")
    # A step-N directory names its run, as --checkpoint does for eval, embed and export.
    assert cli_main(["viz", "curves", "--checkpoint", str(run_dir / "checkpoints" / "step-2")]) == 0
    assert f"wrote {run_dir / 'training_curves.png'}" in capsys.readouterr().out
    assert cli_main(["viz", "curves", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "nope does not exist" in capsys.readouterr().err
    assert cli_main(["viz", "margins", "--out", str(tmp_path / "m.png"), "--margins", "softmax", "arcface",
                     "--steps", "5", "--classes", "4"]) == 0
    assert "(4 panels)" in capsys.readouterr().out  # 2 margins x (2-D, 3-D)
    image = _png(tmp_path / "m.png")
    assert image.shape == (2 * 336, 2 * 312)  # 2 rows x 2 columns of 2.8 x 2.6 inch panels at 120 dpi


def test_missing_checkpoint_is_one_clear_line(tmp_path, capsys):
    for command in (["eval", "--pairs", "x.pairs.npz"], ["embed", "--input", ".", "--out", str(tmp_path / "o")],
                    ["export", "--format", "onnx", "--out", str(tmp_path / "m.onnx")]):
        assert cli_main([command[0], "--checkpoint", str(tmp_path / "nope"), *command[1:]]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not exist" in err and "nope" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("{}\n")
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "run"), "--pairs", "x.pairs.npz"]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err
