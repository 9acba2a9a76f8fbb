"""Invariant 5 (memory): no more than B x chunk_size logits are alive at any moment, and no
tensor anywhere near the full B x S logit matrix is ever created."""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from partial_fc import PartialFC, kernels, margins
from partial_fc.head import sharded_ce


class LogitTracker(TorchDispatchMode):
    """Watches every tensor an aten op returns. A 2-D tensor with a batch-sized dimension and
    another dimension larger than D is a logit tile (either layout); the memory counted is
    that of the distinct storages behind live tiles, so views of one reused buffer count once."""

    def __init__(self, batch: int, dim: int) -> None:
        super().__init__()
        self.batch, self.dim = batch, dim
        self.live: dict[int, list[int]] = {}  # storage address -> [elements, live tile tensors]
        self.peak_logits = 0
        self.largest = 0

    def _release(self, ptr: int) -> None:
        entry = self.live[ptr]
        entry[1] -= 1
        if entry[1] == 0:
            del self.live[ptr]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            self.largest = max(self.largest, t.numel())
            rows, cols = (t.shape if t.dim() == 2 else (0, 0))
            other = cols if rows == self.batch else rows if cols == self.batch else 0
            if other > self.dim:
                storage = t.untyped_storage()
                entry = self.live.setdefault(storage.data_ptr(), [storage.nbytes() // t.element_size(), 0])
                entry[1] += 1
                weakref.finalize(t, self._release, storage.data_ptr())
                self.peak_logits = max(self.peak_logits, sum(e[0] for e in self.live.values()))
        return out


@pytest.mark.parametrize("name", ["arcface", "softmax"])
@pytest.mark.parametrize("sample_rate", [1.0, 0.5])
def test_at_most_one_chunk_of_logits_is_alive(name, sample_rate):
    num_classes, dim, batch, chunk = 1003, 8, 48, 64
    head = PartialFC(num_classes, dim, margin=margins.build(name), sample_rate=sample_rate, chunk_size=chunk)
    x = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))
    tracker = LogitTracker(batch, dim)
    with tracker:
        loss = head(x, labels)
        loss.backward()
    assert tracker.peak_logits <= batch * chunk
    assert tracker.peak_logits >= batch * (chunk // 2)  # the tracker does see the tiles
    # the full logit matrix (B x S >= 48 x 500) never exists; the largest tensors are the
    # shard itself and its gradient rows (S x D)
    assert tracker.largest <= num_classes * dim
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not kernels.enabled(), reason=f"fused CPU kernels unavailable: {kernels.why_unavailable()}")
@pytest.mark.parametrize("state_dtype", ["fp32", "bf16"])
def test_a_fused_tile_of_several_blocks_adds_one_block_of_probabilities(state_dtype, monkeypatch):
    # 9-row blocks (more than D: the tracker counts them as logits): the backward writes each
    # block's probabilities into one reused (9, B) block
    num_classes, dim, batch, chunk, block = 1003, 8, 48, 64, 9
    monkeypatch.setattr(sharded_ce, "GATHER_BLOCK_BYTES", 4 * dim * block)
    head = PartialFC(num_classes, dim, margin=margins.build("arcface"), sample_rate=0.5, chunk_size=chunk,
                     state_dtype=state_dtype)
    x = torch.randn(batch, dim, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch,))
    tracker = LogitTracker(batch, dim)
    with tracker:
        head(x, labels).backward()
    assert batch * (chunk // 2 + block) <= tracker.peak_logits <= batch * (chunk + block)
    assert x.grad is not None and torch.isfinite(x.grad).all()
