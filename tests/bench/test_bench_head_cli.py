"""`partial-fc bench head` as a user calls it: main(argv) with the project's flag names, JSON
to a path or stdout, one-line errors, --find-max, and a rank killed under a running bench."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from partial_fc.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["bench", "head", "--classes", "2000", "--dim", "16", "--batch-size", "8", "--world-size", "2",
        "--steps", "2", "--warmup", "1", "--device", "cpu"]


def test_main_argv_does_not_read_sys_argv(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["pytest", "bench", "data", "--no-such-flag"])  # must not matter
    out = tmp_path / "head.json"
    assert main([*TINY, "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["batch_size"] == 8 and {r["impl"] for r in report["rows"]} == {"head", "naive"}
    assert "head step / GEMM floor" in capsys.readouterr().out  # the table is still printed


def test_json_dash_prints_only_json(capsys):
    assert main([*TINY, "--no-baseline", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["planned_peak_mib"] > 0


@pytest.mark.parametrize("flags, match", [
    (["--offload", "disk"], r"--offload must be one of \['host', 'mmap', 'none'\], got 'disk'"),
    (["--optim-state", "fp16"], r"--optim-state must be one of \['bf16', 'fp32', 'int8'\], got 'fp16'"),
    (["--state-dtype", "fp8"], r"--state-dtype must be one of \['bf16', 'fp16', 'fp32'\], got 'fp8'"),
    (["--device", "tpu"], "--device 'tpu' is not a device"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--find-max", "lots"], "'lots' is not a number with a unit"),
])
def test_one_line_errors(flags, match, capsys):
    assert main([*TINY, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert re.search(match, err), err


@pytest.mark.parametrize("weights, state", [("bf16", "int8"), ("fp16", "bf16"), ("fp32", "int8")])
def test_compact_modes_store_what_they_say(weights, state, capsys):
    from partial_fc.optim import bytes_per_row

    assert main([*TINY, "--no-baseline", "--state-dtype", weights, "--optim-state", state, "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    # the ranks' own tensors, per class row: exactly the optimizers' footprint of the mode
    assert {r["bytes_per_class"] for r in report["rows"]} == {bytes_per_row(dim=16, weight_dtype=weights, state_dtype=state)}
    assert report["config"]["state_dtype"] == weights and report["config"]["optim_state"] == state
    # both ranks compute the same global loss from the same (rounded-once) initial rows
    assert report["rows"][0]["first_loss"] == report["rows"][1]["first_loss"]


@pytest.mark.parametrize("offload", ["host", "mmap"])
def test_offloaded_tables_bench_like_the_in_memory_head(offload, tmp_path, capsys):
    """The same initial rows and inputs: the same first loss as in device memory; the same bytes
    per class (the table is the same tensors, elsewhere); mmap's files are gone afterwards."""
    assert main([*TINY, "--no-baseline", "--state-dtype", "bf16", "--optim-state", "int8", "--json", "-"]) == 0
    memory = json.loads(capsys.readouterr().out)
    assert main([*TINY, "--no-baseline", "--state-dtype", "bf16", "--optim-state", "int8", "--offload", offload,
                 "--offload-dir", str(tmp_path), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["config"]["offload"] == offload
    for a, b in zip(memory["rows"], report["rows"]):
        assert a["first_loss"] == b["first_loss"] and a["bytes_per_class"] == b["bytes_per_class"]
    if offload == "mmap":
        assert "RssAnon" in report["memory"]
        assert all(os.listdir(d) == [] for d in tmp_path.iterdir())  # one (empty) directory per rank


def test_an_offload_dir_without_room_is_one_line(tmp_path, capsys):
    from tests.disk import small_disk

    with small_disk(tmp_path, 64 * 1024) as small:
        assert main([*TINY, "--no-baseline", "--offload", "mmap", "--offload-dir", str(small)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "offload mmap: cannot reserve" in err and "head.offload_dir" in err, err


def test_the_report_names_the_mode(capsys):
    assert main([*TINY, "--no-baseline", "--state-dtype", "bf16", "--optim-state", "int8"]) == 0
    out = capsys.readouterr().out
    assert "mode: class centers bf16, momentum int8, offload none" in out
    assert re.search(r"\nhead\s+0\s+52\s", out), out  # 2 x 16 + 16 + a 4-byte scale per class


def test_find_max_proposes_and_confirms(tmp_path, capsys):
    out = tmp_path / "max.json"
    assert main(["bench", "head", "--find-max", "300MiB", "--dim", "64", "--batch-size", "32", "--sample-rate", "0.1",
                 "--world-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu", "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    fm = found["find_max"]
    assert fm["confirmed"] == found["config"]["classes"] and fm["confirmed"] <= fm["proposed"]
    assert max(r["peak_mib"] for r in found["rows"]) * 2**20 <= 300 * 2**20
    # 300 MiB - 97 MiB runtime over 512 B per class (fp32 D=64 weights + momentum), 2 ranks: ~0.8M
    assert 600_000 < fm["confirmed"] < 850_000
    assert f"largest C within 300.00 MiB per rank: {fm['confirmed']:,} classes" in capsys.readouterr().out


def test_find_max_with_compact_state(tmp_path):
    out = tmp_path / "max.json"
    assert main(["bench", "head", "--find-max", "300MiB", "--dim", "64", "--batch-size", "32", "--sample-rate", "0.1",
                 "--world-size", "2", "--steps", "2", "--warmup", "1", "--device", "cpu", "--state-dtype", "bf16",
                 "--optim-state", "int8", "--json", str(out)]) == 0
    found = json.loads(out.read_text())
    fm = found["find_max"]
    assert max(r["peak_mib"] for r in found["rows"]) * 2**20 <= 300 * 2**20
    # 196 B per class against fp32's 512 (above: < 850k); the sampled rows' working buffers (the
    # logit tile, the bf16 gradient and the indices: ~0.45 KiB per sampled class at r = 0.1; the
    # fused path keeps no fp32 gradient rows) take the rest: ~1.75M
    assert 1_450_000 < fm["confirmed"] <= fm["proposed"] < 1_950_000
    assert found["rows"][0]["bytes_per_class"] == 196


def _rank_pids(parent: int) -> list[int]:
    """The bench's spawned ranks (children running multiprocessing.spawn, not its resource tracker)."""
    kids = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    ranks = []
    for pid in kids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except FileNotFoundError:
            continue
        if "spawn_main" in cmd:
            ranks.append(int(pid))
    return sorted(ranks)


def test_killed_rank_ends_the_bench_with_one_line():
    # enough steps to still be running when the kill comes; the kill is what the OOM killer does
    cmd = [sys.executable, "-m", "partial_fc.cli", *TINY, "--no-baseline", "--steps", "100000"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        while len(ranks := _rank_pids(proc.pid)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the bench never started its ranks"
            time.sleep(0.2)
        time.sleep(3)  # let them form the group and start stepping
        killed_at = time.monotonic()
        os.kill(ranks[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        # the parent polls every 0.1 s and waits 1 s for the others' reports; 15 s is a wide margin
        assert time.monotonic() - killed_at < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("partial-fc bench head: rank 1 was killed by signal 9 (SIGKILL; the kernel's OOM killer")
