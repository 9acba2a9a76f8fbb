"""The data layer: shards for training, pairs for verification, and the tools that make them.

    formats/    what is on disk, read and written byte-exactly: webdataset shards (shards.py) and
                their manifest, the tar index, MXNet RecordIO and InsightFace's use of it, the
                project's .pairs.npz and InsightFace's .bin (pair_files.py reads either), JPEG
                decoding, the restricted unpickler
    convert/    folders of crops and InsightFace RecordIO -> shuffled shards + manifest
    loaders/    training batches: streamed shards (stream.py) or P identities x K images by
                random access (identity.py); build.py chooses and prepares them
    synth/      procedural face-like identities, the offline default data set
    seeding.py, pools.py   counter-based seeds and the worker-pool context they share
    cli.py      `partial-fc data ...`

The names below are imported lazily so that ``partial-fc data convert`` never pays for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "TrainLoaderConfig": "partial_fc.data.loaders.config",
    "build_stream_loader": "partial_fc.data.loaders.stream",
    "StreamLoader": "partial_fc.data.loaders.stream",
    "LoaderStats": "partial_fc.data.loaders.stats",
    "IdentityBatchLoader": "partial_fc.data.loaders.identity",
    "build_loader": "partial_fc.data.loaders.build",
    "IdentityBalancedSampler": "partial_fc.data.loaders.identity_sampler",
    "SampleIndex": "partial_fc.data.formats.tar_index",
    "load_or_build_index": "partial_fc.data.formats.tar_index",
    "PairSet": "partial_fc.data.formats.pairs",
    "load_pairs": "partial_fc.data.formats.pair_files",
    "save_pairs": "partial_fc.data.formats.pairs",
    "ShardManifest": "partial_fc.data.formats.manifest",
    "load_manifest": "partial_fc.data.formats.manifest",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'partial_fc.data' has no attribute {name!r}; choose from {__all__}")
    return getattr(importlib.import_module(_LAZY[name]), name)
