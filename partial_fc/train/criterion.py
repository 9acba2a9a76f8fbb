"""The loss the trainer optimises, built from the ``loss`` and ``head`` config sections.

Every criterion takes (local embeddings (b, D), local labels (b,)) and returns the loss of the
global batch, the same on every rank, with the data-parallel gradient scale applied once in
its all-gather's backward. Those with class weights (the partial-FC head, NormFace's agents)
are ``ShardedClassWeights``: the head optimizer steps their shard row-sparsely and the
checkpoints save and reshard it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from partial_fc import margins
from partial_fc.comm import Collectives
from partial_fc.checkpoint.head_state import rows_per_class
from partial_fc.config.train import AGENT_LOSSES, TrainConfig
from partial_fc.head.class_weights import ShardedClassWeights
from partial_fc.head.partial_fc import PartialFC
from partial_fc.losses import CContrastiveLoss, ContrastiveLoss, CTripletLoss, TripletLoss
from partial_fc.optim.head_optimizer import HeadOptimizer


def build_criterion(cfg: TrainConfig, *, num_classes: int, device: torch.device) -> torch.nn.Module:
    name, head = cfg.loss.name, cfg.head
    dim = cfg.model.embedding_dim
    if name == "partial_fc":
        return PartialFC(num_classes, dim, margin=margins.build(head.margin, **head.margin_params),
                         sample_rate=head.sample_rate, seed=cfg.seed, chunk_size=head.chunk_size,
                         init_std=head.init_std, check_finite=head.check_finite, state_dtype=head.state_dtype,
                         device=device, offload=head.offload,
                         offload_dir=head.offload_dir or str(Path(cfg.run_dir) / "offload"))
    margin = {} if cfg.loss.margin is None else {"margin": cfg.loss.margin}
    if name in ("c_contrastive", "c_triplet"):
        cls = CContrastiveLoss if name == "c_contrastive" else CTripletLoss
        negatives = {"negatives": cfg.loss.negatives} if name == "c_triplet" else {}
        return cls(num_classes, dim, seed=cfg.seed, chunk_size=head.chunk_size, init_std=head.init_std,
                   device=device, **margin, **negatives)
    if name == "triplet":
        return TripletLoss(mining=cfg.loss.mining, semihard_fallback=cfg.loss.semihard_fallback, **margin)
    if name == "contrastive":
        return ContrastiveLoss(**margin)
    raise ValueError(f"loss.name {name!r} is not known; choose from partial_fc, c_contrastive, c_triplet, triplet, contrastive")


def build_head_optimizer(cfg: TrainConfig, criterion: torch.nn.Module, *, lr: float, comm: Collectives) -> HeadOptimizer:
    """Row-sparse SGD or AdamW over the class weights (only the rows sampled in a step change),
    plain SGD or AdamW without weight decay over the criterion's other trainable parameters
    (a learned scale); with neither (the pair losses) a step only reports the backbone's."""
    head = criterion if isinstance(criterion, ShardedClassWeights) else None
    sharded = [criterion.weight] if head is not None else []
    dense = [p for p in criterion.parameters() if p.requires_grad and all(p is not w for w in sharded)]
    # NormFace's agents take no weight decay (decay_mult 0 in the authors' prototxts): the loss
    # sees only their direction, and decay would shrink them and so inflate their steps
    decay = 0.0 if cfg.loss.name in AGENT_LOSSES else cfg.optim.weight_decay
    return HeadOptimizer(sharded=sharded, dense=dense, name=cfg.optim.name, lr=lr, comm=comm,
                         momentum=cfg.optim.momentum, weight_decay=decay, betas=cfg.optim.betas, eps=cfg.optim.eps,
                         max_grad_norm=cfg.optim.head_clip_grad_norm, loss_scaling=cfg.train.precision == "fp16",
                         optim_state=cfg.head.optim_state, rounding=cfg.head.rounding, **_rounding_key(head))


def _rounding_key(head: ShardedClassWeights | None) -> dict[str, int]:
    """The seed and the global id of the shard's first row, which key the stochastic rounding of
    narrow state, so a row rounds the same at every world size."""
    if head is None:
        return {}
    return {"seed": head.seed, "row_offset": head.class_range[0] * rows_per_class(head)}
