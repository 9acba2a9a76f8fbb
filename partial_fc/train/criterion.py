"""The loss the trainer optimises, built from the ``loss`` and ``head`` config sections.

Every criterion takes (local embeddings (b, D), local labels (b,)) and returns the loss of the
global batch, the same on every rank, with the data-parallel gradient scale applied once in
its all-gather's backward. Those with class weights (the partial-FC head, NormFace's agents)
expose ``weight`` (this rank's rows, row-sparse gradient), ``class_range``, ``num_classes``,
``embedding_dim`` and ``seed``, which is what the row-sparse optimizer and the checkpoints use.
"""

from __future__ import annotations

import torch

from partial_fc import margins
from partial_fc.config.train import AGENT_LOSSES, TrainConfig
from partial_fc.head.partial_fc import PartialFC
from partial_fc.losses import CContrastiveLoss, ContrastiveLoss, CTripletLoss, TripletLoss
from partial_fc.optim import RowSparseAdamW, RowSparseSGD


def build_criterion(cfg: TrainConfig, *, num_classes: int, device: torch.device) -> torch.nn.Module:
    name, head = cfg.loss.name, cfg.head
    dim = cfg.model.embedding_dim
    if name == "partial_fc":
        return PartialFC(num_classes, dim, margin=margins.build(head.margin, **head.margin_params),
                         sample_rate=head.sample_rate, seed=cfg.seed, chunk_size=head.chunk_size,
                         init_std=head.init_std, check_finite=head.check_finite, device=device)
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


def class_weights(criterion: torch.nn.Module) -> torch.nn.Module | None:
    """The criterion itself when it holds sharded class weights, else None."""
    return criterion if isinstance(getattr(criterion, "weight", None), torch.nn.Parameter) else None


def build_head_optimizer(cfg: TrainConfig, head: torch.nn.Module | None, *, lr: float) -> torch.optim.Optimizer | None:
    """Row-sparse SGD or AdamW over the class weights (only the rows sampled in a step change)."""
    if head is None:
        return None
    # NormFace's agents take no weight decay (decay_mult 0 in the authors' prototxts): the loss
    # sees only their direction, and decay would shrink them and so inflate their steps
    decay = 0.0 if cfg.loss.name in AGENT_LOSSES else cfg.optim.weight_decay
    if cfg.optim.name == "sgd":
        return RowSparseSGD([head.weight], lr=lr, momentum=cfg.optim.momentum, weight_decay=decay)
    return RowSparseAdamW([head.weight], lr=lr, betas=cfg.optim.betas, eps=cfg.optim.eps, weight_decay=decay)
