"""The trainer with an offloaded class table (``head.offload`` mmap / host): the same run as in
device memory bit for bit (fp32 and compact), over real torchrun ranks, its checkpoints resume
exactly and reshard, and the config refuses what it cannot do."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from partial_fc.checkpoint import latest_checkpoint
from partial_fc.checkpoint.files import safe_load
from partial_fc.config import from_dict
from partial_fc.config.errors import ConfigError
from partial_fc.config.train import TrainConfig
from partial_fc.train.trainer import train
from tests.tiny_run import tiny_config, torchrun_train

COMPACT = {"state_dtype": "bf16", "optim_state": "int8"}


def _config(data_dir: Path, run: Path, head: dict | None = None, **train_keys) -> dict:
    return tiny_config(data_dir, run, eval={"pairs": []}, head=head or {}, train=train_keys)


def _saved(run: Path, world: int = 1) -> tuple[torch.Tensor, dict]:
    files = [safe_load(latest_checkpoint(run) / f"head-rank{r}.pt") for r in range(world)]
    weight = torch.cat([f["weight"] for f in files])
    states = [f["optimizer"]["state"][f["optimizer"]["weight_index"]] for f in files]
    return weight, {k: torch.cat([s[k] for s in states]) for k in states[0]}


def _same(a: Path, b: Path, world: int = 1) -> None:
    (wa, sa), (wb, sb) = _saved(a, world), _saved(b, world)
    assert wa.dtype == wb.dtype and torch.equal(wa, wb)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ta, tb = (safe_load(latest_checkpoint(r) / "trainer.pt") for r in (a, b))
    assert ta["step"] == tb["step"]


@pytest.mark.parametrize("head", [{}, COMPACT], ids=["fp32", "bf16-int8"])
def test_an_offloaded_run_equals_the_in_memory_run_and_resumes_exactly(data_dir, tmp_path, head, capsys):
    memory, mapped, resumed = tmp_path / "memory", tmp_path / "mapped", tmp_path / "resumed"
    train(from_dict(TrainConfig, _config(data_dir, memory, head)))
    train(from_dict(TrainConfig, _config(data_dir, mapped, {**head, "offload": "mmap"})))
    out = capsys.readouterr().out
    assert f"class table offloaded (mmap):" in out and f"mapped files in {mapped / 'offload'}" in out
    _same(memory, mapped)
    assert os.listdir(mapped / "offload") == []  # the table's files were unlinked when mapped
    # stop at step 3, resume from the checkpoint into a mapped table: the same end state
    train(from_dict(TrainConfig, _config(data_dir, resumed, {**head, "offload": "mmap"}, max_steps=3)))
    train(from_dict(TrainConfig, _config(data_dir, resumed, {**head, "offload": "host"})))
    _same(memory, resumed)


def test_an_offloaded_two_rank_run_reshards_onto_one_and_three(data_dir, tmp_path):
    first, reference = tmp_path / "first", tmp_path / "reference"
    cfg = _config(data_dir, first, {"offload": "mmap"}, max_steps=4, checkpoint_every=4)
    out = torchrun_train(2, cfg, tmp_path, "two")
    assert "2 rank(s)" in out and "class table offloaded (mmap)" in out
    torchrun_train(2, _config(data_dir, reference, max_steps=4, checkpoint_every=4), tmp_path, "ref")
    _same(first, reference, world=2)  # bit for bit the in-memory run, over real ranks
    for world in (1, 3):
        run = tmp_path / f"on{world}"
        shutil.copytree(first / "checkpoints", run / "checkpoints")
        out = torchrun_train(world, _config(data_dir, run, {"offload": "mmap"}, max_steps=6, checkpoint_every=6),
                             tmp_path, f"on{world}")
        assert "resharded from world size 2" in out and "step 6/6" in out, out
        weight, _ = _saved(run, world)
        assert weight.shape == _saved(first, 2)[0].shape


def test_the_config_refuses_offload_where_it_cannot_work(data_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"head\.offload must be one of \['none', 'host', 'mmap'\], got 'disk'"):
        from_dict(TrainConfig, _config(data_dir, tmp_path, {"offload": "disk"}))
    agents = _config(data_dir, tmp_path, {"offload": "mmap"})
    agents["loss"] = {"name": "c_triplet"}
    with pytest.raises(ConfigError, match=r"head\.offload is 'mmap' but loss\.name c_triplet keeps its rows on the device"):
        from_dict(TrainConfig, agents)
    with pytest.raises(ConfigError, match=r"train\.grad_accum is 2 but head\.offload host stages one micro-batch"):
        from_dict(TrainConfig, _config(data_dir, tmp_path, {"offload": "host"}, grad_accum=2))


def test_a_resume_reads_the_checkpoint_straight_into_the_mapped_table(data_dir, tmp_path):
    """No second copy of the table exists at resume: the saved rows and their momentum are
    assembled in the table's own memory (a table larger than RAM can resume), which then holds
    exactly one weight and one momentum, and continues bit for bit."""
    from partial_fc.checkpoint import load_checkpoint
    from partial_fc.comm import make_collectives
    from partial_fc.train.criterion import build_criterion, build_head_optimizer

    run = tmp_path / "run"
    train(from_dict(TrainConfig, _config(data_dir, run, {"offload": "mmap"}, max_steps=3)))
    cfg = from_dict(TrainConfig, _config(data_dir, tmp_path / "again", {"offload": "mmap"}))
    head = build_criterion(cfg, num_classes=cfg.head.num_classes or head_classes(run), device=torch.device("cpu"))
    opt = build_head_optimizer(cfg, head, lr=0.1, comm=make_collectives())
    table, ptr = head.weight.row_table, head.weight.data_ptr()
    load_checkpoint(latest_checkpoint(run), comm=make_collectives(), head=head, head_optimizer=opt,
                    expect_extra=None, seed=cfg.seed)
    opt.convert_loaded_state()
    saved, state = _saved(run)
    assert head.weight.data_ptr() == ptr and torch.equal(head.weight.detach(), saved)
    mine = opt.state[head.weight]
    assert all(table.owns(v) and torch.equal(v, state[k]) for k, v in mine.items())
    assert table.bytes == head.weight.numel() * 4 + sum(v.numel() * v.element_size() for v in mine.values())


def head_classes(run: Path) -> int:
    return safe_load(latest_checkpoint(run) / "head-rank0.pt")["class_range"][1]
