"""Growing a trained run: rows from the mean embedding of the new identities' images (checked
against an independent forward pass of the loaded backbone), and a fine-tuning run of the
trainer that resumes the grown checkpoint with head.num_classes = C + N."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from partial_fc.checkpoint import latest_checkpoint, read_meta
from partial_fc.checkpoint.class_table import open_class_table
from partial_fc.cli import main as cli_main
from partial_fc.config import load_yaml
from partial_fc.config.train import TrainConfig
from partial_fc.data.loaders.worker_stream import to_float_chw
from partial_fc.eval.backbone import load_backbone
from partial_fc.train.trainer import train

NEW = {"bob": 3, "alice": 2, "carol": 1}  # identity -> images; sorted by name they become C, C + 1, C + 2


def _identity_folders(root: Path) -> Path:
    rng = np.random.default_rng(5)
    for name, count in NEW.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_rows_from_images_are_the_unit_mean_of_unit_embeddings(run_dir, tmp_path):
    folders = _identity_folders(tmp_path / "new_ids")
    out = tmp_path / "grown"
    assert cli_main(["centers", "grow", "--checkpoint", str(run_dir), "--add", "3", "--from-images", str(folders),
                     "--out", str(out), "--batch-size", "4", "--quiet"]) == 0
    c = read_meta(latest_checkpoint(run_dir))["num_classes"]
    rows = open_class_table(latest_checkpoint(out)).rows(c, c + 3)
    # the oracle: one forward pass per identity here, fp64 normalisation and mean
    model, _, _ = load_backbone(run_dir)
    for i, name in enumerate(sorted(NEW)):
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted((folders / name).iterdir())])
        with torch.no_grad():
            emb = model(to_float_chw(images)).double()
        mean = torch.nn.functional.normalize(emb, dim=1).mean(0)
        # float32 forward passes in other batches (4 images, not one identity's): GEMM blocking moves ~1e-7
        torch.testing.assert_close(rows[i].double(), mean / mean.norm(), rtol=0, atol=1e-5)
    assert torch.allclose(rows.double().norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-6)
    mapping = json.loads((out / "new_classes.json").read_text())
    assert mapping["rows"] == "images" and mapping["classes"] == [
        {"class": c + i, "identity": name, "images": NEW[name]} for i, name in enumerate(sorted(NEW))]
    assert load_yaml(out / "config.yaml", TrainConfig).head.num_classes == c + 3


def test_from_images_counts_identities_before_embedding(run_dir, data_dir, tmp_path, capsys):
    assert cli_main(["centers", "grow", "--checkpoint", str(run_dir), "--add", "3", "--from-images", str(data_dir),
                     "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--from-images {data_dir} holds 24 identities; expected --add 3" in err
    assert not (tmp_path / "x").exists()


def test_the_trainer_fine_tunes_a_grown_checkpoint_written_at_another_world_size(run_dir, data_dir, tmp_path, capsys):
    out = tmp_path / "plus"
    assert cli_main(["centers", "grow", "--checkpoint", str(run_dir), "--add", "4", "--out", str(out),
                     "--world-size", "2", "--quiet"]) == 0
    c = read_meta(latest_checkpoint(run_dir))["num_classes"]
    grown = open_class_table(latest_checkpoint(out)).rows(0, c + 4)
    capsys.readouterr()
    cfg = load_yaml(out / "config.yaml", TrainConfig, overrides=["train.max_steps=4"])
    assert cfg.run_dir == str(out) and cfg.head.num_classes == c + 4
    train(cfg)
    printed = capsys.readouterr().out
    assert "at step 2 (resharded from world size 2)" in printed
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "step" in json.loads(line)]
    assert min(steps) == 3 and max(steps) == 4, "the run did not continue from the grown checkpoint's step"
    final = latest_checkpoint(out)
    assert final.name == "step-4" and read_meta(final)["num_classes"] == c + 4
    tuned = open_class_table(final).rows(0, c + 4)
    assert not torch.equal(tuned[c:], grown[c:]), "the new rows were never sampled as negatives"


def test_train_resume_of_the_grown_step_directory_with_the_source_config(run_dir, tmp_path, capsys):
    """The other path: the source run's config, --resume pointing at the grown step directory,
    head.num_classes set to C + N; with the old count the fingerprint refuses it, naming both."""
    out = tmp_path / "plus"
    assert cli_main(["centers", "grow", "--checkpoint", str(run_dir), "--add", "2", "--out", str(out), "--quiet"]) == 0
    c = read_meta(latest_checkpoint(run_dir))["num_classes"]
    step_dir = latest_checkpoint(out)
    base = ["train", "--config", str(run_dir / "config.yaml"), "--resume", str(step_dir),
            "--set", f"run_dir={tmp_path / 'tuned'}", "--set", "train.max_steps=3"]
    capsys.readouterr()
    assert cli_main(base) == 2
    assert f"has num_classes={c + 2}, this head has num_classes={c}" in capsys.readouterr().err
    assert cli_main([*base, "--set", f"head.num_classes={c + 2}"]) == 0
    assert f"loaded checkpoint {step_dir} at step 2 (same world size)" in capsys.readouterr().out
    final = latest_checkpoint(tmp_path / "tuned")
    assert final.name == "step-3" and read_meta(final)["num_classes"] == c + 2
