"""Input checks shared by the head and the pair/agent losses.

``check_batch`` is local (no host sync). ``check_global`` runs one all-reduce of 5 integers and
one host sync so that every rank raises the same error: a rank that raised alone would leave the
others waiting in the next collective.
"""

from __future__ import annotations

import torch

from partial_fc.comm import Collectives


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, *, embedding_dim: int | None = None) -> None:
    """Shapes and dtypes of one rank's (b, D) embeddings and (b,) integer labels."""
    want = "D" if embedding_dim is None else str(embedding_dim)
    if (not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2
            or (embedding_dim is not None and embeddings.shape[1] != embedding_dim)):
        shape = tuple(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise ValueError(f"embeddings must have shape (b, {want}), got {shape}")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be floating point, got {embeddings.dtype}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must have shape (b,), got {shape}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of class ids, got {labels.dtype}")
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and embeddings ({embeddings.shape[0]}) differ in length")
    if embeddings.shape[0] == 0:
        raise ValueError("empty batch: embeddings has 0 rows")


def check_global(embeddings: torch.Tensor, labels: torch.Tensor, comm: Collectives, *, num_classes: int | None,
                 check_finite: bool = True) -> None:
    """Equal local batch sizes on every rank, labels in [0, num_classes), finite embeddings."""
    b = embeddings.shape[0]
    nonfinite = (~torch.isfinite(embeddings)).sum() if check_finite else torch.zeros((), dtype=torch.int64)
    flags = torch.stack([
        torch.tensor(b), torch.tensor(-b), labels.max().long().cpu(), -labels.min().long().cpu(), nonfinite.long().cpu(),
    ]).to(embeddings.device)
    max_b, neg_min_b, max_label, neg_min_label, bad = comm.all_reduce_(flags, "max").tolist()
    if max_b != -neg_min_b:
        raise ValueError(f"local batch sizes differ across ranks: between {-neg_min_b} and {max_b}; every rank must pass the same b")
    if -neg_min_label < 0:
        raise ValueError(f"label {-neg_min_label} is outside [0, {num_classes if num_classes is not None else 'C'})")
    if num_classes is not None and max_label >= num_classes:
        raise ValueError(f"label {max_label} is outside [0, {num_classes})")
    if bad:
        raise ValueError(f"embeddings contain {bad} non-finite values on at least one rank")


def check_sample_rate(sample_rate: float) -> None:
    """The one check of ``sample_rate`` (the head's, and the config's through ``config.errors.check_as``):
    the fraction of negative classes kept per step, in (0, 1]."""
    ok = isinstance(sample_rate, (int, float)) and not isinstance(sample_rate, bool) and 0.0 < sample_rate <= 1.0
    if not ok:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
