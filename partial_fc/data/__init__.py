"""The data layer: shards for training, pairs for verification, and the tools that make them.

    synth/            procedural face-like identities, the offline default data set
    convert_*.py      folders of crops, InsightFace RecordIO and .bin files -> shards / pairs
    shard_writer.py   webdataset tar shards, complete-or-absent; manifest.py describes them
    loader.py         the training loader (resampled, split by rank and worker, endless)
    identity_loader.py  P identities x K images per batch, by random access (tar_index.py)
    pairs.py          the project's verification-pair format; pair_loader.py batches it

The names below are imported lazily so that ``partial-fc data convert`` never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "TrainLoaderConfig": "partial_fc.data.loader_config",
    "build_train_loader": "partial_fc.data.loader",
    "TrainLoader": "partial_fc.data.loader",
    "LoaderStats": "partial_fc.data.loader_stats",
    "IdentityBatchLoader": "partial_fc.data.identity_loader",
    "build_loader": "partial_fc.data.identity_loader",
    "IdentityBalancedSampler": "partial_fc.data.identity_sampler",
    "SampleIndex": "partial_fc.data.tar_index",
    "load_or_build_index": "partial_fc.data.tar_index",
    "PairSet": "partial_fc.data.pairs",
    "load_pairs": "partial_fc.data.pairs",
    "save_pairs": "partial_fc.data.pairs",
    "iter_pair_batches": "partial_fc.data.pair_loader",
    "ShardManifest": "partial_fc.data.manifest",
    "load_manifest": "partial_fc.data.manifest",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'partial_fc.data' has no attribute {name!r}; choose from {__all__}")
    return getattr(importlib.import_module(_LAZY[name]), name)
