"""`partial-fc centers grow` with the seed rule: a valid complete checkpoint of C + N classes whose
new rows are those a fresh head of C + N classes starts with, whose old rows and optimizer state
are the saved ones, and which loads (and trains) at another world size. Exact comparisons:
growing copies rows and draws the new ones from the same generator as a fresh head."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from partial_fc import PartialFC
from partial_fc.centers.new_rows import seed_rows
from partial_fc.checkpoint import load_checkpoint, read_meta, save_checkpoint
from partial_fc.checkpoint.class_table import open_class_table
from partial_fc.checkpoint.files import safe_load, sha256_of
from partial_fc.checkpoint.grow import grow_checkpoint
from partial_fc.cli import main as cli_main
from partial_fc.comm import SingleProcess
from partial_fc.head.ranges import class_range
from partial_fc.losses import CContrastiveLoss
from tests.centers.ranks import C, D, SEED, STEPS, load_grown, train_and_save
from tests.distributed import run_ranks

N = 5


@pytest.fixture(scope="module")
def grown(saved, tmp_path_factory):
    out = tmp_path_factory.mktemp("grown") / "run"
    # saved at world size 3, written for 2, loaded below at 3 and 1
    assert cli_main(["centers", "grow", "--checkpoint", str(saved["w3"]), "--add", str(N), "--out", str(out),
                     "--world-size", "2", "--quiet"]) == 0
    return out / "checkpoints" / f"step-{STEPS}"


def test_new_rows_are_a_fresh_heads_and_old_rows_are_kept(saved, grown):
    fresh = PartialFC(C + N, D, margin="cosface", seed=SEED).weight.detach()
    table = open_class_table(grown)
    assert table.num_classes == C + N
    rows = table.rows(0, C + N)
    assert torch.equal(rows[:C], torch.cat([r["weight"] for r in saved["original"]]))
    assert torch.equal(rows[C:], fresh[C:])
    assert not torch.equal(rows[:C], fresh[:C]), "the trained rows would not be told apart from the initial ones"


def test_the_grown_checkpoint_is_complete_and_valid(saved, grown, capsys):
    meta = read_meta(grown)
    source = read_meta(saved["w3"])
    assert meta["num_classes"] == C + N and meta["world_size"] == 2 and meta["step"] == STEPS
    assert meta["class_ranges"] == [list(class_range(C + N, 2, r)) for r in range(2)]
    assert meta["extra"]["num_classes"] == C + N and meta["extra"]["arch"] == "toy"
    assert meta["extra"]["grown_from"] == {"checkpoint": str(saved["w3"]), "num_classes": C, "added": N}
    assert meta["rng"] is False and meta["head_seed"] == SEED and meta["head_type"] == "PartialFC"
    assert sorted(meta["files"]) == ["head-rank0.pt", "head-rank1.pt", "trainer.pt"]
    for name, record in meta["files"].items():
        assert record == {"size": (grown / name).stat().st_size, "sha256": sha256_of(grown / name)}, name
    assert meta["files"]["trainer.pt"] == source["files"]["trainer.pt"]  # copied byte for byte
    for r in range(2):
        payload = safe_load(grown / f"head-rank{r}.pt")
        assert payload["class_range"] == list(class_range(C + N, 2, r))
        assert payload["module_state"]["_extra_state"] == {"step": STEPS, "num_classes": C + N, "seed": SEED,
                                                           "class_range": list(class_range(C + N, 2, r))}
        assert payload["optimizer"]["per_row"] == ["momentum_buffer"]
    assert not [p for p in grown.parent.iterdir() if ".tmp" in p.name]
    assert json.loads((grown.parent.parent / "new_classes.json").read_text())["classes"][0] == \
        {"class": C, "identity": None, "images": 0}


@pytest.mark.parametrize("world", [3, 1])
def test_loads_into_a_head_of_c_plus_n_at_another_world_size_and_trains(saved, grown, world):
    loaded = ([load_grown(0, 1, str(grown), C + N)] if world == 1
              else run_ranks(load_grown, world, str(grown), C + N))
    weight = torch.cat([r["weight"] for r in loaded])
    assert torch.equal(weight, open_class_table(grown).rows(0, C + N))
    momentum = torch.cat([r["momentum"] for r in loaded])
    assert torch.equal(momentum[:C], torch.cat([r["momentum"] for r in saved["original"]]))
    assert (momentum[C:] == 0).all() and (momentum[:C] != 0).any()
    assert all(r["step"] == STEPS and r["lr"] == saved["original"][0]["lr"] for r in loaded)
    after = torch.cat([r["after"] for r in loaded])
    assert not torch.equal(after[C + N - 4 :], weight[C + N - 4 :]), "the new classes' rows did not train"


def test_sub_center_rows_grow_by_k_per_class(tmp_path):
    k_head = PartialFC(C, D, margin="subcenter_arcface", seed=SEED)
    k = k_head.weight.shape[0] // C
    assert k > 1
    run_ranks(train_and_save, 2, str(tmp_path / "src"), "subcenter_arcface")
    out = tmp_path / "out"
    assert cli_main(["centers", "grow", "--checkpoint", str(tmp_path / "src" / "checkpoints" / f"step-{STEPS}"),
                     "--add", "2", "--out", str(out), "--quiet"]) == 0
    fresh = PartialFC(C + 2, D, margin="subcenter_arcface", seed=SEED).weight.detach()
    rows = open_class_table(out / "checkpoints" / f"step-{STEPS}").rows(0, C + 2)
    assert rows.shape == ((C + 2) * k, D) and torch.equal(rows[C * k :], fresh[C * k :])


def test_agent_rows_start_on_the_unit_sphere_like_a_fresh_agent_loss(tmp_path):
    agents = CContrastiveLoss(C, D, seed=SEED)
    save_checkpoint(tmp_path / "src", 1, comm=SingleProcess(), head=agents, head_optimizer=None, trainer_state={})
    source = tmp_path / "src" / "checkpoints" / "step-1"
    rows = seed_rows(head_type=read_meta(source)["head_type"], seed=SEED, dim=D, init_std=0.01)
    path = grow_checkpoint(source, tmp_path / "out", add=3, new_rows=rows)
    fresh = CContrastiveLoss(C + 3, D, seed=SEED).weight.detach()
    assert torch.equal(open_class_table(path).rows(0, C + 3), fresh)  # untrained: every row a fresh one's


def test_refusals_are_one_line_naming_what_was_expected(saved, grown, tmp_path, capsys):
    def fails(*argv: str) -> str:
        assert cli_main(["centers", "grow", "--quiet", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    assert "without checkpoints" in fails("--checkpoint", str(saved["w3"]), "--add", "2", "--out",
                                          str(grown.parent.parent))
    assert "--add must be an integer >= 1" in fails("--checkpoint", str(saved["w3"]), "--add", "0",
                                                    "--out", str(tmp_path / "a"))
    assert "world-size must be an integer in [1, 30]" in fails("--checkpoint", str(saved["w3"]), "--add", "1",
                                                               "--world-size", "31", "--out", str(tmp_path / "b"))
    assert not (tmp_path / "b").exists(), "a refused grow wrote something"
    with pytest.raises(ValueError, match=r"new rows of classes \[29, 31\) are \(1, 6\); expected .*\(2, 6\)"):
        grow_checkpoint(saved["w3"], tmp_path / "c", add=2, new_rows=lambda lo, hi: torch.zeros(1, D))
    assert not list((tmp_path / "c" / "checkpoints").iterdir()), "a failed grow leaves its temporary directory"
    assert np.isfinite(open_class_table(grown).rows(0, C + N).numpy()).all()


def test_compact_8_bit_optimizer_state_of_new_rows_is_a_fresh_optimizers(tmp_path):
    from tests.centers.ranks import make_int8_adamw, train_int8_and_save

    saved = run_ranks(train_int8_and_save, 2, str(tmp_path / "src"))
    source = tmp_path / "src" / "checkpoints" / f"step-{STEPS}"
    assert cli_main(["centers", "grow", "--checkpoint", str(source), "--add", "3", "--out", str(tmp_path / "out"),
                     "--world-size", "1", "--quiet"]) == 0
    head, opt = make_int8_adamw(C + 3)
    load_checkpoint(tmp_path / "out" / "checkpoints" / f"step-{STEPS}", comm=SingleProcess(), head=head,
                    head_optimizer=opt)
    state = opt.state[head.weight]
    assert sorted(state) == sorted(saved[0])
    x, y = torch.randn(4, D), torch.arange(C - 1, C + 3)
    head(x, y).backward()
    fresh_head, fresh = make_int8_adamw(C + 3)
    fresh_head(x, y).backward()
    fresh.step()  # creates the state of every row: what a row holds before its first update
    untouched = fresh.state[fresh_head.weight]["row_steps"] == 0  # neither a positive nor a sampled negative
    assert untouched.any()
    for key, value in state.items():
        old = torch.cat([r[key] for r in saved])
        assert value.dtype == old.dtype and torch.equal(value[:C], old), key
        assert torch.equal(value[C:], torch.zeros_like(value[C:])), key
        before = fresh.state[fresh_head.weight][key][untouched]
        assert before.dtype == value.dtype and not before.any(), key
    assert (state["row_steps"][:C] > 0).any()
    opt.step()
    assert torch.isfinite(head.weight).all() and (opt.state[head.weight]["row_steps"][C:] == 1).all()
