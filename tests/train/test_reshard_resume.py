"""Resuming at another world size continues the same schedule over the same data: the lr is a
function of the samples seen, the run ends at the same total of samples, and the data position
is taken from the samples, not from the step counter (which counts steps of another size)."""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest

from partial_fc.config import from_dict
from partial_fc.config.train import TrainConfig
from partial_fc.optim.schedule import WarmupDecay
from partial_fc.train.position import resume_position, steps_left
from partial_fc.train.trainer import train
from tests.tiny_run import tiny_config, torchrun_train as _torchrun

EPOCH = 192  # the tiny data: 24 identities x 8 images; divisible by 8, 16 and 24 (1, 2, 3 ranks of 8)
TOTAL = 2 * EPOCH  # train.epochs 2
WARMUP = EPOCH // 2  # schedule.warmup_epochs 0.5
BASE_LR = 0.1  # absolute (lr_reference_batch null): the same base at every world size
STOP = 5  # the 2-rank run is resumed from step-5: 80 samples, inside the warm-up


def _config(data_dir: Path, run: Path, **train) -> dict:
    return tiny_config(data_dir, run, eval={"pairs": []}, schedule={"warmup_epochs": 0.5},
                       train={"max_steps": None, "log_every": 1, "checkpoint_every": STOP, "keep_last": 10, **train})


def _curve(x: Fraction) -> Fraction:
    """The uninterrupted schedule in samples, exact: linear warm-up to WARMUP, then polynomial
    decay with power 2 to 0 at TOTAL."""
    return x / WARMUP if x < WARMUP else (1 - (x - WARMUP) / Fraction(TOTAL - WARMUP)) ** 2


def _expected_lr(before: int, batch: int) -> float:
    """A step taking samples [before, before + batch) runs at the curve's highest value over them
    (the curve rises to 1 at WARMUP, then falls)."""
    if before <= WARMUP <= before + batch:
        return BASE_LR
    return BASE_LR * float(max(_curve(Fraction(before)), _curve(Fraction(before + batch))))


def _steps(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "lr" in r]


def _check_curve_and_position(rows: list[dict], *, batch: int) -> None:
    for r in rows:
        before = r["samples_seen"] - batch
        # the trainer's float arithmetic against exact rationals: a few ulps at most
        assert r["lr"] == pytest.approx(_expected_lr(before, batch), rel=1e-12, abs=0), r
        assert r["epoch"] == before // EPOCH, f"step {r['step']} read epoch {r['epoch']} at sample {before}"


def _resume_copy(straight: Path, into: Path) -> None:
    """A run directory holding only the straight run's step-5 checkpoint."""
    (into / "checkpoints").mkdir(parents=True)
    shutil.copytree(straight / "checkpoints" / f"step-{STOP}", into / "checkpoints" / f"step-{STOP}")


def test_resharded_resume_continues_the_schedule_and_the_data_in_samples(data_dir, tmp_path):
    straight = tmp_path / "straight"
    out = _torchrun(2, _config(data_dir, straight), tmp_path, "straight")
    assert "24 steps (12/epoch)" in out
    rows = _steps(straight)
    assert [r["step"] for r in rows] == list(range(1, 25)) and rows[-1]["samples_seen"] == TOTAL
    _check_curve_and_position(rows, batch=16)

    # 2 -> 3 ranks: 80 samples are 3 batches of 24 and 8 samples; rounded down to 72
    three = tmp_path / "three"
    _resume_copy(straight, three)
    out = _torchrun(3, _config(data_dir, three), tmp_path, "three")
    rows = _steps(three)
    assert [r["epoch"] for r in rows] == [0] * 5 + [1] * 8  # batches 3..7 of epoch 0, then all 8 of epoch 1
    _check_curve_and_position(rows, batch=24)
    assert [r["step"] for r in rows] == list(range(STOP + 1, STOP + 14))
    assert [r["samples_seen"] for r in rows] == [72 + 24 * k for k in range(1, 14)]
    assert "resharded from world size 2" in out
    assert ("resuming at sample 72 of 384 (epoch 0, batch 3 of 8): the 80 samples seen are not a whole number of "
            "batches of 24 into epoch 0; rounded down, 8 samples are read twice; 13 steps to go") in out, out
    # the same total: 384 samples on the schedule; 392 trained, the 8 read twice
    assert rows[-1]["samples_seen"] == TOTAL and 16 * STOP + 24 * len(rows) - TOTAL == 8

    # 2 -> 1 rank: 80 samples are exactly 10 batches of 8
    one = tmp_path / "one"
    _resume_copy(straight, one)
    metrics = train(from_dict(TrainConfig, _config(data_dir, one)))
    rows = _steps(one)
    assert [r["samples_seen"] for r in rows] == [80 + 8 * k for k in range(1, 39)]
    _check_curve_and_position(rows, batch=8)
    assert metrics["steps"] == STOP + 38 and metrics["samples_seen"] == TOTAL

    # where a resumed step starts at the same sample as a step of the uninterrupted run, past the
    # warm-up, both run at the same lr to the bit (the same integers in the same formula)
    reference = {r["samples_seen"] - 16: r["lr"] for r in _steps(straight)}
    for run, batch, expected in ((three, 24, [96, 144, 192, 240, 288, 336]), (one, 8, list(range(96, 384, 16)))):
        met = {r["samples_seen"] - batch: r["lr"] for r in _steps(run) if r["samples_seen"] - batch in reference}
        assert sorted(s for s in met if s >= WARMUP) == expected
        assert all(met[s] == reference[s] for s in expected), run


def test_the_sample_schedule_at_a_fixed_batch_is_the_step_schedule_bit_for_bit():
    """Same world size, same run: the lr of every step is the float the step-counted schedule gave
    (written out here as it was), for every kind, with and without warm-up."""
    def by_step(step: int, total: int, warmup: int, kind: str, power: float, final: float) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        import math

        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = (1.0 - progress) ** power if kind == "polynomial" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return final + (1.0 - final) * decay

    for kind, power, final in (("polynomial", 2.0, 0.0), ("polynomial", 1.3, 0.05), ("cosine", 2.0, 0.1), ("constant", 2.0, 0.0)):
        for total, warmup, batch in ((1404, 70, 1536), (936, 0, 2304), (7, 7, 8), (1, 0, 3), (1000, 333, 384)):
            schedule = WarmupDecay(total_samples=total * batch, warmup_samples=warmup * batch, kind=kind, power=power,
                                   final_ratio=final)
            for step in range(total):
                assert schedule.factor(step * batch, batch=batch) == by_step(step, total, warmup, kind, power, final), \
                    (kind, total, warmup, step)


def test_the_demo_figures_from_2_to_3_ranks(tmp_path):
    """configs/demo.yaml on 30,000 samples: 1,404 steps of 128 at 2 ranks, 936 of 192 at 3. The
    step-counted schedule gave step 130 resumed at 3 ranks the lr 0.066 (step 130 of 936) where
    the uninterrupted run had 0.049. Counted in samples, step 131 starts at sample 16,640 at either
    world size and takes the same factor of its base rate (0.05 = 0.2 x 128/512 at 2 ranks, 0.075 at
    3: optim.lr is per 512 samples, so the rate per sample is the same), and 850 steps remain."""
    from partial_fc.config import load_yaml
    from partial_fc.train.trainer import plan

    (tmp_path / "manifest.json").write_text(json.dumps({
        "format": "partial-fc-shards", "version": 1, "num_classes": 1000, "num_samples": 30_000,
        "shards": [{"name": "train-000000.tar", "num_samples": 30_000, "num_bytes": 1}]}))
    cfg = load_yaml(Path(__file__).parents[2] / "configs" / "demo.yaml", TrainConfig, overrides=[f"data.train={tmp_path}"])
    (two, _), (three, _) = plan(cfg, world_size=2), plan(cfg, world_size=3)
    assert (two.total_steps, two.global_batch, three.total_steps, three.global_batch) == (1404, 128, 936, 192)
    assert two.total_samples == three.total_samples == 179_712 and two.warmup_samples == three.warmup_samples == 14_976

    def schedule(p):
        return WarmupDecay(total_samples=p.total_samples, warmup_samples=p.warmup_samples, kind="polynomial", power=2.0)

    seen = 130 * 128
    straight = two.lr * schedule(two).factor(seen, batch=128)
    resumed = three.lr * schedule(three).factor(seen, batch=192)
    assert round(straight, 3) == 0.049 and resumed == pytest.approx(1.5 * straight, rel=1e-15)
    old = three.lr * (1 - (130 - 78) / (936 - 78)) ** 2  # the step counter against the 3-rank plan
    assert round(old, 3) == 0.066
    assert steps_left(seen, total_samples=three.total_samples, global_batch=192) == 850  # ceil(163,072 / 192)


def test_resume_position_rounds_down_and_counts_the_repeated_samples():
    p = resume_position(80, epoch_samples=192, micro_batch=16)  # the saving run's own batch: exact
    assert (p.epoch, p.skip, p.samples_seen, p.repeated) == (0, 5, 80, 0)
    p = resume_position(80, epoch_samples=192, micro_batch=24)
    assert (p.epoch, p.skip, p.samples_seen, p.repeated) == (0, 3, 72, 8)
    p = resume_position(200, epoch_samples=192, micro_batch=8)
    assert (p.epoch, p.skip, p.samples_seen, p.repeated) == (1, 1, 200, 0)
    p = resume_position(3 * 192, epoch_samples=192, micro_batch=24)
    assert (p.epoch, p.skip, p.repeated) == (3, 0, 0)
    with pytest.raises(ValueError, match="micro_batch"):
        resume_position(1, epoch_samples=192, micro_batch=0)
