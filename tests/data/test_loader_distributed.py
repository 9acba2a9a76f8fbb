"""2 ranks x 2 DataLoader workers over 5 shards of uneven sizes: every rank yields the same
number of batches (a collective per batch would hang otherwise), deterministically."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from partial_fc.comm import make_collectives
from partial_fc.data.loaders.shard_check import DataWarning
from partial_fc.data.loaders.stream import build_stream_loader
from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.shard_source import stream_shards
from tests.data.helpers import write_shards
from tests.distributed import run_ranks

STEPS = 7
SHARD_SIZES = [3, 10, 29, 1, 6]  # 5 shards for 4 streams, none the same size


def _config(shards: list[str]) -> TrainLoaderConfig:
    return TrainLoaderConfig(
        shards=tuple(shards), batch_size=4, image_size=32, num_workers=2, steps_per_epoch=STEPS, num_classes=7, seed=3,
        worker_start_method="fork",  # the ranks are spawned; spawned workers would re-import torch (slow)
    )


def _labels(loader) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(v) for _, labels in loader for v in labels]


def _rank_main(rank: int, world_size: int, shards: list[str]) -> dict:
    missing = str(Path(shards[0]).parent / "missing.tar")  # left out, named, counted once
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        loader = build_stream_loader(_config([*shards, missing]), rank=rank, world_size=world_size)
    batches, labels = 0, []
    for images, y in loader:
        assert images.shape == (4, 3, 32, 32)
        # A collective per step, as training does: with unequal batch counts this would hang.
        total = torch.ones(1)
        dist.all_reduce(total)
        assert total.item() == world_size
        batches += 1
        labels += y.tolist()
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size)]
    dist.all_gather(counts, torch.tensor([batches]))
    return {"batches": batches, "all_batches": [int(c) for c in counts], "labels": labels,
            "stats": loader.stats.as_dict(), "summed": loader.stats.summed(make_collectives())}


@pytest.mark.timeout(180)
def test_two_ranks_two_workers_equal_batches(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, SHARD_SIZES)
    results = run_ranks(_rank_main, 2, shards, timeout_s=150)
    assert [r["batches"] for r in results] == [STEPS, STEPS]
    assert results[0]["all_batches"] == [STEPS, STEPS]
    assert results[0]["labels"] != results[1]["labels"]  # ranks read different data
    for r in results:  # what each rank read is summed; what the data set lost (the same on each) is not
        assert (r["summed"]["batches"], r["summed"]["samples"]) == (2 * STEPS, 2 * STEPS * 4)
        assert r["stats"]["shards_missing"] == r["summed"]["shards_missing"] == 1
    # Deterministic: rank 0 rebuilt here, in another process, sees exactly the same stream.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = build_stream_loader(_config(shards), rank=0, world_size=2)
    assert _labels(again) == results[0]["labels"]
    assert again.epoch == 1  # a full pass advances the epoch ...
    assert _labels(again) != results[0]["labels"]  # ... and a new epoch reads a new order
    again.set_epoch(0)
    assert _labels(again) == results[0]["labels"]


def test_fewer_shards_than_streams_still_equal(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [5])
    with pytest.warns(UserWarning, match="1 shards for 4 reading streams"):
        loaders = [build_stream_loader(_config(shards), rank=r, world_size=2) for r in range(2)]
    assert [sum(1 for _ in loader) for loader in loaders] == [STEPS, STEPS]


def test_stream_split_covers_each_pass_once() -> None:
    streams = [stream_shards(5, seed=1, epoch=0, stream=k, num_streams=4) for k in range(4)]
    taken = [[next(s) for _ in range(5)] for s in streams]  # 20 positions = 4 full passes
    by_position = [None] * 20
    for k, shard_list in enumerate(taken):
        for j, shard in enumerate(shard_list):
            by_position[k + 4 * j] = shard
    for p in range(4):
        assert sorted(by_position[5 * p : 5 * p + 5]) == [0, 1, 2, 3, 4]  # each pass is a permutation
    assert by_position[:5] != by_position[5:10]  # passes are reshuffled
    again = stream_shards(5, seed=1, epoch=0, stream=2, num_streams=4)
    assert [next(again) for _ in range(5)] == taken[2]
    with pytest.raises(ValueError, match=r"stream must be in \[0, 4\), got 4"):
        next(stream_shards(5, seed=1, epoch=0, stream=4, num_streams=4))


def test_loader_arguments_are_checked(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, [2])
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        build_stream_loader(_config(shards), rank=2, world_size=2)
    with pytest.raises(ValueError, match="data.batch_size must be >= 1, got 0"):
        TrainLoaderConfig(shards=tuple(shards), batch_size=0, steps_per_epoch=1)
    with pytest.raises(ValueError, match="steps_per_epoch is None and so is data.num_samples"):
        TrainLoaderConfig(shards=tuple(shards), batch_size=2)


def test_shuffle_seeded_by_seed_rank_and_epoch(tmp_path: Path) -> None:
    # One shard and one stream: the shard order cannot differ, only the in-worker shuffle can.
    shards = write_shards(tmp_path, [12], label_of=lambda i: i)
    config = TrainLoaderConfig(shards=tuple(shards), batch_size=4, image_size=32, num_workers=0,
                               steps_per_epoch=3, shuffle_buffer=12, seed=0)  # fmt: skip

    def order(cfg: TrainLoaderConfig, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _labels(build_stream_loader(cfg, rank=rank, world_size=world_size, epoch=epoch))

    first = order(config, 0)
    assert first != list(range(12))  # shuffled (the endless stream may repeat a sample early)
    assert order(config, 0) == first
    assert order(config, 1) != first
    assert order(config.with_(seed=1), 0) != first
    # rank 1 of 2 reads the same single shard, shuffled by its own seed
    assert order(config, 0, rank=1, world_size=2) != order(config, 0, rank=0, world_size=2)
