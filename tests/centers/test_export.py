"""`partial-fc centers export`: one matrix from checkpoints of any world size, equal row for row
to the head's weights. Comparisons are exact: exporting copies rows, it computes nothing (except
--normalize, checked against an fp64 oracle)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from partial_fc import PartialFC
from partial_fc.checkpoint import save_checkpoint
from partial_fc.checkpoint.class_table import open_class_table
from partial_fc.cli import main as cli_main
from partial_fc.comm import SingleProcess
from tests.centers.ranks import C, D

REPO = Path(__file__).resolve().parents[2]


def _export(step_dir, out, *extra: str) -> np.ndarray:
    assert cli_main(["centers", "export", "--checkpoint", str(step_dir), "--out", str(out), *extra]) == 0
    return np.load(out)


def test_world_sizes_1_2_3_export_the_identical_matrix_equal_to_the_heads_rows(saved, tmp_path, capsys):
    heads = torch.cat([r["weight"] for r in saved["original"]]).numpy()  # the world-3 ranks' shards in order
    assert heads.shape == (C, D)
    for world in (1, 2, 3):
        assert json.loads((saved[f"w{world}"] / "meta.json").read_text())["world_size"] == world
        matrix = _export(saved[f"w{world}"], tmp_path / f"w{world}.npy")
        assert matrix.dtype == np.float32 and np.array_equal(matrix, heads), world
    assert "(world size 2, step 3)" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp")), "the temporary file of the atomic write is left behind"


def test_blocks_smaller_than_a_shard_give_the_same_matrix(saved, tmp_path):
    from partial_fc.centers.export import export_npy

    heads = torch.cat([r["weight"] for r in saved["original"]]).numpy()
    export_npy(open_class_table(saved["w3"]), tmp_path / "m.npy", block_classes=4)  # blocks cross shard borders
    assert np.array_equal(np.load(tmp_path / "m.npy"), heads)


def test_normalize_gives_unit_rows(saved, tmp_path):
    heads = torch.cat([r["weight"] for r in saved["original"]]).double()
    unit = _export(saved["w2"], tmp_path / "unit.npy", "--normalize")
    oracle = (heads / heads.norm(dim=1, keepdim=True)).numpy()
    # float32 division of a float32 row by its float32 norm: a few ulps (~1e-7 relative)
    np.testing.assert_allclose(unit, oracle, rtol=0, atol=1e-6)


def test_a_run_directory_means_its_newest_checkpoint_and_a_bf16_table_widens_exactly(tmp_path):
    head = PartialFC(C, D, margin="cosface", seed=3)
    head.weight = torch.nn.Parameter(head.weight.detach().to(torch.bfloat16))  # a compact table
    save_checkpoint(tmp_path / "run", 5, comm=SingleProcess(), head=head, head_optimizer=None, trainer_state={})
    (tmp_path / "run" / "config.yaml").write_text("")  # a run directory is one with a config
    matrix = _export(tmp_path / "run", tmp_path / "bf16.npy")
    assert matrix.dtype == np.float32 and np.array_equal(matrix, head.weight.detach().float().numpy())


def test_errors_name_the_file(saved, tmp_path, capsys):
    assert cli_main(["centers", "export", "--checkpoint", str(saved["w1"]), "--out", str(tmp_path / "x.st"),
                     "--format", "safetensors"]) == 2
    err = capsys.readouterr().err
    assert "x.st" in err and "use --format npy" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.st").exists()
    save_checkpoint(tmp_path / "pairs", 1, comm=SingleProcess(), head=None, head_optimizer=None, trainer_state={},
                    device=torch.device("cpu"))
    with pytest.raises(ValueError, match="holds no class weights"):
        open_class_table(tmp_path / "pairs" / "checkpoints" / "step-1")
    broken = tmp_path / "broken"
    shutil.copytree(saved["w2"], broken / "checkpoints" / "step-3")
    shard = broken / "checkpoints" / "step-3" / "head-rank1.pt"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"head-rank1\.pt is corrupt"):
        open_class_table(broken / "checkpoints" / "step-3")


def test_a_file_that_does_not_fit_is_one_line_and_leaves_nothing(saved, tmp_path):
    # its own process: the file size limit (RLIMIT_FSIZE, the kernel answers EFBIG; SIGXFSZ ignored
    # so the write fails instead of killing the process) must not touch the test runner
    code = ("import sys; from tests.centers.test_export import _export_under_fsize_limit; "
            "_export_under_fsize_limit(sys.argv[1], sys.argv[2])")
    out = tmp_path / "centers.npy"
    done = subprocess.run([sys.executable, "-c", code, str(saved["w3"]), str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"the file size limit is reached writing {out} (29 x 6 float32, 696 bytes): "
                           "this process may write files of at most 512 bytes (ulimit -f)"), line
    assert "\n" not in line and list(tmp_path.iterdir()) == []


def _export_under_fsize_limit(step_dir: str, out: str) -> None:
    import resource
    import signal

    from partial_fc.centers.export import export_npy

    table = open_class_table(step_dir)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    try:
        export_npy(table, out)  # 128 header bytes + 696
    except ValueError as e:
        print(e)
