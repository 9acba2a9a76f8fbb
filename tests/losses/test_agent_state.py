"""The agent losses carry the state the checkpoints read, like PartialFC: ``seed`` and the extra
state {num_classes, class_range, seed}; ``state_dict`` / ``load_state_dict`` round-trip the agents,
a shard of other classes is refused naming both ranges, and a checkpoint saved at 2 ranks loads
onto 1 (the checkpoint code replaces the saved class range with the loading rank's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from partial_fc.comm import SingleProcess, make_collectives
from partial_fc.losses import CContrastiveLoss, CTripletLoss
from partial_fc.optim import RowSparseSGD
from partial_fc.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tests.distributed import run_ranks

C, D, B = 7, 4, 6  # 7 agents: uneven shards at 2 ranks


def trained(cls, seed: int = 5):
    loss = cls(C, D, seed=seed, chunk_size=3)
    opt = RowSparseSGD([loss.weight], lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(11)
    loss(torch.randn(B, D, generator=g), torch.randint(0, C, (B,), generator=g)).backward()
    opt.step()
    return loss


@pytest.mark.parametrize("cls", [CContrastiveLoss, CTripletLoss])
def test_state_dict_round_trips_the_agents_and_their_extra_state(cls):
    source = trained(cls)
    state = source.state_dict()
    assert sorted(state) == ["_extra_state", "weight"]
    assert state["_extra_state"] == {"num_classes": C, "class_range": [0, C], "seed": 5}
    assert source.seed == 5
    target = cls(C, D, seed=9, chunk_size=3)  # other initial rows
    assert not torch.equal(target.weight, source.weight)
    target.load_state_dict(state, strict=True)
    assert torch.equal(target.weight, source.weight)
    x, y = torch.randn(B, D), torch.arange(B) % C
    assert torch.equal(target(x, y), source(x, y))


def test_a_shard_of_other_classes_is_refused_naming_both_ranges():
    loss = CTripletLoss(C, D)
    state = loss.state_dict()
    state["_extra_state"] = {**state["_extra_state"], "class_range": [0, 4]}
    with pytest.raises(ValueError, match=r"holds agents \[0, 4\) of 7, this loss owns \[0, 7\) of 7"):
        loss.load_state_dict(state)
    with pytest.raises(ValueError, match=r"holds agents \[0, 7\) of 9, this loss owns \[0, 7\) of 7"):
        loss.set_extra_state({"num_classes": 9, "class_range": [0, 7], "seed": 0})


def _save_at(rank: int, world: int, run_dir: str) -> list:
    loss = trained(CTripletLoss)
    save_checkpoint(Path(run_dir), 1, comm=make_collectives(), head=loss, head_optimizer=None, trainer_state={})
    return [loss.weight.detach().clone(), list(loss.class_range)]


def test_a_checkpoint_of_two_shards_loads_onto_one_rank(tmp_path):
    saved = run_ranks(_save_at, 2, str(tmp_path))
    assert [r[1] for r in saved] == [[0, 4], [4, 7]]
    loss = CTripletLoss(C, D, seed=5)
    load_checkpoint(latest_checkpoint(tmp_path), comm=SingleProcess(), head=loss, head_optimizer=None)
    assert torch.equal(loss.weight.detach(), torch.cat([r[0] for r in saved]))
    assert loss.get_extra_state() == {"num_classes": C, "class_range": [0, C], "seed": 5}
