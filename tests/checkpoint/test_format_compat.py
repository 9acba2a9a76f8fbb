"""A checkpoint written before the checkpoint code became ``partial_fc.checkpoint`` still loads:
``data/step-2`` was saved by that older code at world size 2 (``data/make_format1.py``).
Expected values are read from its files with plain ``torch.load``, not through the code under
test; every comparison is exact, since loading only copies."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from partial_fc import PartialFC
from partial_fc.checkpoint import TrainerState, load_checkpoint, read_meta, save_checkpoint
from partial_fc.comm import SingleProcess, make_collectives
from partial_fc.optim import RowSparseSGD
from tests.distributed import run_ranks

OLD = Path(__file__).parent / "data" / "step-2"


def _raw(name: str):
    return torch.load(OLD / name, weights_only=True)


def _fresh():
    head = PartialFC(10, 4, margin="cosface", sample_rate=0.5, seed=5)
    return head, RowSparseSGD([head.weight], lr=99.0, momentum=0.9)  # the saved lr is 0.1


def test_an_old_checkpoint_reshards_to_one_rank():
    head, opt = _fresh()
    state = load_checkpoint(OLD, comm=SingleProcess(), head=head, head_optimizer=opt, expect_extra={"arch": "toy"})
    shards = [_raw(f"head-rank{r}.pt") for r in (0, 1)]
    assert torch.equal(head.weight.detach(), torch.cat([s["weight"] for s in shards]))
    momentum = torch.cat([s["optimizer"]["state"][0]["momentum_buffer"] for s in shards])
    assert torch.equal(opt.state[head.weight]["momentum_buffer"], momentum)
    assert opt.param_groups[0]["lr"] == 0.1 and head.step == 2
    trainer = TrainerState.from_dict(state, path=OLD / "trainer.pt")
    assert (trainer.step, trainer.samples_seen) == (2, 12)
    assert torch.equal(trainer.backbone["w"], torch.arange(6.0).view(2, 3))
    assert "head_type" not in read_meta(OLD)  # it predates the field


def _load_at_two(rank: int, world: int, path: str) -> dict:
    head, opt = _fresh()
    load_checkpoint(path, comm=make_collectives(), head=head, head_optimizer=opt)
    return {"weight": head.weight.detach().clone(), "momentum": opt.state[head.weight]["momentum_buffer"].clone(),
            "range": list(head.class_range), "draw": torch.rand(5)}


def test_an_old_checkpoint_resumes_exactly_at_its_world_size():
    for rank, got in enumerate(run_ranks(_load_at_two, 2, str(OLD))):
        shard = _raw(f"head-rank{rank}.pt")
        assert got["range"] == shard["class_range"]
        assert torch.equal(got["weight"], shard["weight"])
        assert torch.equal(got["momentum"], shard["optimizer"]["state"][0]["momentum_buffer"])
        saved = torch.Generator()
        saved.set_state(_raw(f"rng-rank{rank}.pt")["torch"])
        assert torch.equal(got["draw"], torch.rand(5, generator=saved))  # the saved RNG state, restored


def test_a_new_checkpoint_has_the_old_files_and_keys(tmp_path):
    """The format is unchanged: the same files, the same keys, plus ``head_type``."""
    head, opt = _fresh()
    load_checkpoint(OLD, comm=SingleProcess(), head=head, head_optimizer=opt)
    path = save_checkpoint(tmp_path, 2, comm=SingleProcess(), head=head, head_optimizer=opt,
                           trainer_state=TrainerState(engine={"model": {}}, step=2, samples_seen=12),
                           meta_extra={"arch": "toy"})
    old, new = json.loads((OLD / "meta.json").read_text()), read_meta(path)
    assert set(new) - set(old) == {"head_type"} and set(old) <= set(new)
    assert new["head_type"] == "PartialFC" and new["format_version"] == old["format_version"]
    assert sorted(p.name for p in path.iterdir()) == ["head-rank0.pt", "meta.json", "rng-rank0.pt", "trainer.pt"]
    for name in ("head-rank0.pt", "trainer.pt"):
        ours, theirs = torch.load(path / name, weights_only=True), _raw(name)
        assert set(ours) == set(theirs), name
    assert set(torch.load(path / "head-rank0.pt", weights_only=True)["optimizer"]) == set(_raw("head-rank0.pt")["optimizer"])
