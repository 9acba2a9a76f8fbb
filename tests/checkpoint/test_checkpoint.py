"""Checkpoints: exact resume at the same world size, resharding of the head (rows and per-row
optimizer state) to other world sizes, completeness, retention and refusal of bad files.
Every comparison is exact (torch.equal): resharding only copies rows, it computes nothing."""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from partial_fc import PartialFC
from partial_fc.comm import SingleProcess, make_collectives
from partial_fc.optim import RowSparseAdamW, RowSparseSGD
from partial_fc.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, read_meta, save_checkpoint
from partial_fc.checkpoint.files import sha256_of
from partial_fc.checkpoint.reshard import assemble_rows, overlaps
from tests.distributed import run_ranks

C, D = 103, 8  # 103 classes: uneven shards at world sizes 2, 3 and 4
EXTRA = {"arch": "toy", "config_fingerprint": "abc123"}


def _head_and_opt(kind: str, lr: float | None = None):
    head = PartialFC(C, D, margin="cosface", sample_rate=0.5, seed=7)
    if kind == "sgd":
        return head, RowSparseSGD([head.weight], lr=lr or 0.1, momentum=0.9, weight_decay=1e-3)
    return head, RowSparseAdamW([head.weight], lr=lr or 0.01, betas=(0.8, 0.9), weight_decay=0.1)


def _snapshot(head, opt) -> dict:
    return {"weight": head.weight.detach().clone(), "step": head.step, "lr": opt.param_groups[0]["lr"],
            "state": {k: v.clone() for k, v in opt.state[head.weight].items()}}


def _train_and_save(rank: int, world: int, run_dir: str) -> dict:
    comm = make_collectives()
    out = {}
    for kind in ("sgd", "adamw"):
        head, opt = _head_and_opt(kind)
        g = torch.Generator().manual_seed(100 + rank)
        for _ in range(3):
            x, y = torch.randn(4, D, generator=g), torch.randint(0, C, (4,), generator=g)
            head(x, y).backward()
            opt.step()
            opt.zero_grad()
        save_checkpoint(Path(run_dir) / kind, 3, comm=comm, head=head, head_optimizer=opt,
                        trainer_state={"samples_seen": 12 * 3}, meta_extra=EXTRA, keep_last=2)
        out[kind] = _snapshot(head, opt)
    return out


def _load(rank: int, world: int, run_dir: str) -> dict:
    comm = make_collectives()
    out = {}
    for kind in ("sgd", "adamw"):
        head, opt = _head_and_opt(kind, lr=123.0)  # fresh: initial rows, no state, another lr
        trainer = load_checkpoint(latest_checkpoint(Path(run_dir) / kind), comm=comm, head=head, head_optimizer=opt,
                                  expect_extra=EXTRA)
        out[kind] = {**_snapshot(head, opt), "trainer": trainer, "range": list(head.class_range)}
    return out


def _assembled(results: list[dict], kind: str, key: str | None = None) -> torch.Tensor:
    parts = [r[kind]["weight"] if key is None else r[kind]["state"][key] for r in results]
    return torch.cat(parts)


@pytest.fixture(scope="module")
def saved_at_3(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run3")
    return run_dir, run_ranks(_train_and_save, 3, str(run_dir))


@pytest.mark.parametrize("world", [2, 1, 4])
def test_reshard_restores_every_row_and_its_optimizer_state(saved_at_3, world):
    run_dir, original = saved_at_3
    # world size 1 runs here, with no process group (SingleProcess), as a 1-GPU job would
    loaded = [_load(0, 1, str(run_dir))] if world == 1 else run_ranks(_load, world, str(run_dir))
    for kind, keys in (("sgd", ["momentum_buffer"]), ("adamw", ["exp_avg", "exp_avg_sq", "row_steps"])):
        if kind == "adamw":  # the case is meaningful only if some rows were sampled and some never
            steps = _assembled(original, kind, "row_steps")
            assert (steps == 0).any() and (steps > 0).any()
        assert torch.equal(_assembled(loaded, kind), _assembled(original, kind))
        for key in keys:
            ours, theirs = _assembled(loaded, kind, key), _assembled(original, kind, key)
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), (kind, key)
        assert sorted(loaded[0][kind]["state"]) == sorted(keys)
        for r in loaded:
            assert r[kind]["step"] == 3 and r[kind]["lr"] == original[0][kind]["lr"]
            assert r[kind]["trainer"] == {"samples_seen": 36}
        assert [r[kind]["range"][0] for r in loaded][0] == 0 and loaded[-1][kind]["range"][1] == C


# ------------------------------------------------------------------------------- exact resume


def _straight_then_first(rank: int, world: int, run_dir: str) -> dict:
    """Both uninterrupted halves in one set of processes (each spawn costs seconds)."""
    straight = _resume_run(rank, world, run_dir, "straight")
    _resume_run(rank, world, run_dir, "first")
    return straight


def _resume_run(rank: int, world: int, run_dir: str, mode: str) -> dict:
    """mode: 'straight' (6 steps), 'first' (3 steps, save), 'second' (load, 3 steps)."""
    comm = make_collectives()
    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, D)  # identical on every rank
    head, opt = _head_and_opt("sgd")
    bopt = torch.optim.SGD(backbone.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(bopt, step_size=2, gamma=0.5)
    torch.manual_seed(1000 + rank)
    np.random.seed(rank)
    random.seed(rank)
    steps = range(6) if mode == "straight" else range(3) if mode == "first" else range(3, 6)
    seen = 0
    if mode == "second":
        torch.manual_seed(999)  # a resume that forgot the RNG states would draw other inputs
        trainer = load_checkpoint(latest_checkpoint(run_dir), comm=comm, head=head, head_optimizer=opt, expect_extra=EXTRA)
        backbone.load_state_dict(trainer["backbone"])
        bopt.load_state_dict(trainer["backbone_optimizer"])
        sched.load_state_dict(trainer["scheduler"])
        seen = trainer["extra"]["samples_seen"]
    for _ in steps:
        inputs = torch.randn(4, 6) + float(np.random.rand()) + random.random()
        labels = torch.randint(0, C, (4,))
        head(backbone(inputs), labels).backward()
        for p in backbone.parameters():  # what DDP does: average the backbone gradients
            comm.all_reduce_(p.grad, "sum").div_(world)
        opt.step(), bopt.step(), sched.step()
        opt.zero_grad(), bopt.zero_grad()
        seen += 4 * world
    if mode == "first":
        state = {"backbone": backbone.state_dict(), "backbone_optimizer": bopt.state_dict(),
                 "scheduler": sched.state_dict(), "extra": {"samples_seen": seen}}
        save_checkpoint(run_dir, 3, comm=comm, head=head, head_optimizer=opt, trainer_state=state, meta_extra=EXTRA)
        return {}
    return {**_snapshot(head, opt), "backbone": [p.detach().clone() for p in backbone.parameters()], "seen": seen,
            "draws": [torch.rand(3), torch.tensor(np.random.rand(3)), torch.tensor([random.random()])]}


def test_resume_at_the_same_world_size_is_exact(tmp_path):
    straight = run_ranks(_straight_then_first, 2, str(tmp_path))
    resumed = run_ranks(_resume_run, 2, str(tmp_path), "second")  # fresh processes
    for s, r in zip(straight, resumed):
        assert torch.equal(s["weight"], r["weight"])
        assert torch.equal(s["state"]["momentum_buffer"], r["state"]["momentum_buffer"])
        assert all(torch.equal(a, b) for a, b in zip(s["backbone"], r["backbone"]))
        assert all(torch.equal(a, b) for a, b in zip(s["draws"], r["draws"]))
        assert s["step"] == r["step"] == 6 and s["seen"] == r["seen"] == 48


# ------------------------------------------------------------------- completeness and retention


def _save_single(run_dir: Path, step: int, *, keep_last: int = 3, num_classes: int = 50, extra=None) -> Path:
    head = PartialFC(num_classes, 4, margin="softmax", seed=3)
    opt = RowSparseSGD([head.weight], lr=0.1, momentum=0.9)
    head(torch.randn(2, 4), torch.tensor([1, 2])).backward()
    opt.step()
    return save_checkpoint(run_dir, step, comm=SingleProcess(), head=head, head_optimizer=opt,
                           trainer_state={"step": step}, meta_extra=extra or EXTRA, keep_last=keep_last)


def _load_single(path: Path, *, num_classes: int = 50, expect=None):
    head = PartialFC(num_classes, 4, margin="softmax", seed=3)
    opt = RowSparseSGD([head.weight], lr=0.1, momentum=0.9)
    return load_checkpoint(path, comm=SingleProcess(), head=head, head_optimizer=opt, expect_extra=expect)


def test_incomplete_directories_are_ignored_and_keep_last_prunes(tmp_path):
    for step in (1, 2, 3):
        _save_single(tmp_path, step, keep_last=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]  # step 1 deleted once step 3 was complete
    root = tmp_path / "checkpoints"
    (root / "step-9").mkdir()  # crashed before meta.json
    (root / "step-10.tmp-0123").mkdir()  # crashed before the rename, meta.json already there
    (root / "step-10.tmp-0123" / "meta.json").write_text((root / "step-3" / "meta.json").read_text())
    assert latest_checkpoint(tmp_path) == root / "step-3"
    with pytest.raises(ValueError, match="no meta.json"):
        _load_single(root / "step-9")
    with pytest.raises(ValueError, match="unfinished checkpoint"):
        _load_single(root / "step-10.tmp-0123")
    with pytest.raises(ValueError, match="does not exist"):
        _load_single(root / "step-77")
    assert _load_single(root / "step-3") == {"step": 3}


# ------------------------------------------------------------------------------------- errors


def test_mismatches_are_clear_errors(tmp_path):
    path = _save_single(tmp_path, 1)
    with pytest.raises(ValueError, match=r"num_classes=50, this head has num_classes=51"):
        _load_single(path, num_classes=51)
    with pytest.raises(ValueError, match=r"arch='toy', this run has arch='r50'"):
        _load_single(path, expect={"arch": "r50"})
    with pytest.raises(ValueError, match=r"trainer_state\['bad'\] is a ndarray"):
        save_checkpoint(tmp_path, 2, comm=SingleProcess(), head=PartialFC(50, 4, margin="softmax"), head_optimizer=None,
                        trainer_state={"bad": np.zeros(2)})


def test_truncated_or_corrupt_files_are_named(tmp_path):
    path = _save_single(tmp_path, 1)
    target, meta_text = path / "head-rank0.pt", (path / "meta.json").read_text()
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"head-rank0\.pt is \d+ bytes.*truncated"):
        _load_single(path)
    _set_record(path, "head-rank0.pt")  # meta agrees with the broken file: the archive reader must object
    head = PartialFC(50, 4, margin="softmax", seed=3)
    with pytest.raises(ValueError, match=r"head-rank0\.pt cannot be read"):
        load_checkpoint(path, comm=SingleProcess(), head=head, head_optimizer=None, verify=False)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(flipped))  # same size, one bit changed: only the hash can tell
    (path / "meta.json").write_text(meta_text)
    with pytest.raises(ValueError, match=r"head-rank0\.pt is corrupt"):
        _load_single(path)


def _set_record(path: Path, name: str) -> None:
    meta = json.loads((path / "meta.json").read_text())
    meta["files"][name] = {"size": (path / name).stat().st_size, "sha256": sha256_of(path / name)}
    (path / "meta.json").write_text(json.dumps(meta))


class _Payload:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_refused_unexecuted(tmp_path):
    path = _save_single(tmp_path, 1)
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    _Payload.marker = payload.marker
    (path / "head-rank0.pt").write_bytes(pickle.dumps({"weight": payload}))
    _set_record(path, "head-rank0.pt")  # an attacker who can write the directory can fix meta.json too
    with pytest.raises(ValueError, match=r"head-rank0\.pt holds objects other than tensors.*weights_only"):
        _load_single(path)
    assert not (tmp_path / "pwned").exists()
    assert read_meta(path)["step"] == 1


# ------------------------------------------------------------------------------- sub-centers


def test_assemble_rows_with_sub_centers():
    """K = 3 rows per class, contiguous per class: classes saved as [0, 4) [4, 7) read as [2, 6)."""
    k, full = 3, torch.arange(7 * 3 * 2).view(21, 2)
    saved = [(0, 4), (4, 7)]
    shards = [full[0:12], full[12:21]]
    sources = [(lo, hi, saved[r][0], shards[r]) for r, lo, hi in overlaps(saved, 2, 6)]
    assert torch.equal(assemble_rows(2, 6, rows_per_class=k, sources=sources, like=shards[0]), full[6:18])
