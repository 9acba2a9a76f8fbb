"""The one definition of checkpoint names, ``trainer.pt``'s schema, and ``head_type`` in meta.json."""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC
from partial_fc.checkpoint import TrainerState, list_checkpoints, read_meta, save_checkpoint
from partial_fc.checkpoint.layout import checkpoints_root, is_temporary, step_dir_name, step_of, tmp_dir_name
from partial_fc.comm import SingleProcess


def test_names_round_trip_and_only_complete_step_dirs_count(tmp_path):
    assert step_of(step_dir_name(120)) == 120 and step_of("step-120.tmp-00ff") is None and step_of("step-x") is None
    assert is_temporary(tmp_dir_name(3, 255)) and tmp_dir_name(3, 255) == "step-3.tmp-00000000000000ff"
    root = checkpoints_root(tmp_path)
    for name in ("step-2", "step-10", "step-7", tmp_dir_name(11, 1), "step-8", "notes"):
        (root / name).mkdir(parents=True)
        if name != "step-8":  # no meta.json: a crash before the commit
            (root / name / "meta.json").write_text("{}")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [2, 7, 10]  # numeric order, not by name


def test_trainer_state_round_trips_and_names_what_is_missing(tmp_path):
    state = TrainerState(engine={"model": {"w": torch.ones(2)}, "optimizer": {}}, step=5, samples_seen=40)
    again = TrainerState.from_dict(state.to_dict(), path="t.pt")
    assert (again.step, again.samples_seen) == (5, 40) and torch.equal(again.backbone["w"], torch.ones(2))
    with pytest.raises(ValueError, match=r"t\.pt lacks \['samples_seen'\]: a trainer\.pt holds \['engine', 'step', 'samples_seen'\]"):
        TrainerState.from_dict({"engine": {"model": {}}, "step": 1}, path="t.pt")
    with pytest.raises(ValueError, match=r"t\.pt lacks engine\.model \(the backbone state dict\)"):
        TrainerState.from_dict({"engine": {}, "step": 1, "samples_seen": 0}, path="t.pt")


def test_meta_names_the_head_type(tmp_path):
    path = save_checkpoint(tmp_path / "a", 1, comm=SingleProcess(), head=PartialFC(6, 4, margin="softmax"),
                           head_optimizer=None, trainer_state=TrainerState(engine={"model": {}}, step=1, samples_seen=2))
    assert read_meta(path)["head_type"] == "PartialFC"
    path = save_checkpoint(tmp_path / "b", 1, comm=SingleProcess(), head=None, head_optimizer=None, trainer_state={})
    assert read_meta(path)["head_type"] is None
    assert torch.load(path / "trainer.pt", weights_only=True) == {}
