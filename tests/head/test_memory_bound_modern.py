"""Invariant 5 (memory) for the modern margins: each keeps a fixed number of logit-sized tiles
alive, independent of the class count, and never the B x S block. The bound each one meets,
counted in tile entries (the tracker counts elements: a bool or int64 tile of B x c entries
counts B x c), with B the global batch and c the classes per tile:

* AdaFace, MagFace: B x chunk_size, the classic bound. Their hooks work on B values
  (``prepare``, ``target_logit``, ``regularizer``) and never touch a tile.
* Sub-center ArcFace, K sub-centers: B x (K + 2) x (chunk_size // K). A tile holds
  c = chunk_size // K classes, so K c <= chunk_size cosines before the max, then the (c, B) max
  and its (c, B) int64 arg-max, which the backward needs to route the gradient; in the backward
  the (K c, B) row gradient replaces the K c cosines. At most (1 + 2 / K) B x chunk_size.
* CurricularFace: 4 B x chunk_size while ``negative_logits`` runs: the plain tile, its cosines
  (turned in place into the factor t + cos, then into z'), the derivative tile dz'/dz and a bool
  hard-negative mask; two tiles (z', dz'/dz) after it returns.
"""

from __future__ import annotations

import pytest
import torch

from partial_fc import PartialFC, margins
from tests.head.test_memory_bound import LogitTracker

DIM, BATCH, CHUNK = 8, 48, 64


def bound(name: str, params: dict) -> int:
    if name == "subcenter_arcface":
        k = params["subcenters"]
        return BATCH * (k + 2) * (CHUNK // k)
    if name == "curricularface":
        return 4 * BATCH * CHUNK
    return BATCH * CHUNK


def run(name: str, params: dict, num_classes: int, sample_rate: float) -> tuple[LogitTracker, PartialFC, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    head = PartialFC(num_classes, DIM, margin=margins.build(name, **params), sample_rate=sample_rate, chunk_size=CHUNK)
    # norms ~20: MagFace's magnitude inside [l_a, u_a], AdaFace's scaler away from its clip
    x = (torch.randn(BATCH, DIM, generator=g) * 20.0).requires_grad_()
    labels = torch.randint(0, num_classes, (BATCH,), generator=g)
    if name == "curricularface":
        head.margin.t.fill_(0.3)  # so that the hard-negative branch runs on part of every tile
    tracker = LogitTracker(BATCH, DIM)
    with tracker:
        head(x, labels).backward()
    return tracker, head, x


MODERN = {
    "adaface": ("adaface", {}),
    "magface": ("magface", {}),
    "subcenter_K2": ("subcenter_arcface", {"subcenters": 2}),
    "subcenter_K3": ("subcenter_arcface", {"subcenters": 3}),
    "subcenter_K5": ("subcenter_arcface", {"subcenters": 5}),
    "curricularface": ("curricularface", {}),
}


@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
@pytest.mark.parametrize("case", list(MODERN))
def test_modern_margin_keeps_its_stated_number_of_tiles(case, sample_rate):
    name, params = MODERN[case]
    small, head, x = run(name, params, 1003, sample_rate)
    assert small.peak_logits <= bound(name, params)
    assert small.peak_logits >= BATCH * (CHUNK // 2)  # the tracker does see the tiles
    # S >= 500 sampled classes, many tiles: the B x S block never exists; the largest tensors are
    # the shard (K rows per class) and its gradient rows
    assert small.largest <= 1003 * head.margin.subcenters * DIM
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # four times the classes, within the same bound: nothing grows with the class count (the
    # tiles are equal parts of S, so their size moves a little with S, never past chunk_size)
    large, _, _ = run(name, params, 4 * 1003, sample_rate)
    assert BATCH * (CHUNK // 2) <= large.peak_logits <= bound(name, params)
