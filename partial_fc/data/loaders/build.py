"""Which training loader a run uses, and what must exist before its ranks build one.

    prepare_loader(config, sampler="identity", comm=comm)   # rank 0 indexes the shards, the others wait
    loader = build_loader(config, sampler="identity", images_per_identity=4, rank=r, world_size=n)
"""

from __future__ import annotations

from typing import Any

from partial_fc.data.loaders.config import TrainLoaderConfig
from partial_fc.data.loaders.identity import IdentityBatchLoader, index_for
from partial_fc.data.loaders.stream import StreamLoader

SAMPLERS = ("stream", "identity")


def prepare_loader(config: TrainLoaderConfig, *, sampler: str, comm: Any, device: Any = None) -> None:
    """Collective (every rank calls it): for the identity sampler, rank 0 builds the tar index and
    writes its cache, the others then read the cache instead of every rank parsing every tar
    header at once. ``comm`` is a ``partial_fc.comm.Collectives``; one all-gather of one float."""
    if sampler != "identity" or comm.world_size == 1:
        return
    import torch

    if comm.rank == 0:
        index_for(config.shards)
    comm.all_gather(torch.zeros(1, device=device))


def build_loader(config: TrainLoaderConfig, *, sampler: str, images_per_identity: int, rank: int, world_size: int,
                 epoch: int = 0, small_identities: str = "replace") -> StreamLoader | IdentityBatchLoader:
    """``sampler="stream"``: StreamLoader (images_per_identity and small_identities unused);
    ``"identity"``: IdentityBatchLoader. Both have len, set_epoch, iteration, iterate(start), stats."""
    if sampler == "stream":
        return StreamLoader(config, rank=rank, world_size=world_size, epoch=epoch)
    if sampler == "identity":
        return IdentityBatchLoader(config, images_per_identity=images_per_identity, rank=rank, world_size=world_size,
                                   epoch=epoch, small_identities=small_identities)
    raise ValueError(f"data sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
