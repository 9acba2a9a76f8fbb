from __future__ import annotations

import pytest

from partial_fc.checkpoint import latest_checkpoint
from tests.centers.ranks import reshard_and_save, train_and_save
from tests.distributed import run_ranks


@pytest.fixture(scope="package")
def saved(tmp_path_factory) -> dict:
    """A head trained at world size 3 and saved, then the same rows saved at world sizes 2 and 1
    (loaded and resaved): {"original": per-rank states, "w1"/"w2"/"w3": step directories}."""
    root = tmp_path_factory.mktemp("centers")
    original = run_ranks(train_and_save, 3, str(root / "w3"))
    run_ranks(reshard_and_save, 2, str(root / "w3"), str(root / "w2"))
    reshard_and_save(0, 1, str(root / "w3"), str(root / "w1"))  # no process group: a 1-GPU job
    return {"original": original, **{f"w{n}": latest_checkpoint(root / f"w{n}") for n in (1, 2, 3)}}
