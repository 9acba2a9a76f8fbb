"""P identities x K images per batch, for online triplet mining across ranks.

Works from a per-sample label array (e.g. the labels of the manifest's samples, or the label
column of an index of (shard, key, label)); yields lists of sample indices into that array.

Per epoch, the eligible identities are shuffled by a generator seeded from (seed, epoch) only,
so every rank sees the same order. Step t uses the block of N x P identities
[t N P, (t + 1) N P) of that order, and rank r takes the P identities [r P, (r + 1) P) of the
block: the ranks' identities are disjoint within a step (and within the epoch). The K images of
identity c are drawn by a generator seeded from (seed, epoch, c), so they do not depend on the
rank or the world size. An epoch has floor(#eligible / (N P)) steps; leftover identities wait
for the next epoch's shuffle.

Identities with fewer than K images: ``small_identities="skip"`` (default) leaves them out;
``"replace"`` keeps them and draws their K images with replacement (identities with at least K
images are always drawn without replacement).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

_SMALL = ("skip", "replace")
_ORDER_TAG, _IMAGES_TAG = 0x1D0, 0x1D1


class IdentityBalancedSampler:
    """Batch sampler: ``for batch in sampler`` gives P * K sample indices (identity-major: the
    K images of the first identity, then the next). Use as a DataLoader ``batch_sampler``;
    call ``set_epoch`` before each epoch. ``batch(step, epoch=e)`` gives any one batch
    directly (random access, e.g. for a map-style dataset over steps)."""

    def __init__(self, labels: Sequence[int] | np.ndarray, *, p: int, k: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, small_identities: str = "skip") -> None:
        for name, value in (("p", p), ("k", k), ("world_size", world_size)):
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if small_identities not in _SMALL:
            raise ValueError(f"small_identities must be one of {list(_SMALL)}, got {small_identities!r}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-d integer array, got shape {labels.shape} dtype {labels.dtype}")
        self.p, self.k, self.rank, self.world_size, self.seed = int(p), int(k), rank, world_size, seed
        self.small_identities, self.epoch = small_identities, 0
        order = np.argsort(labels, kind="stable")
        ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        minimum = 1 if small_identities == "replace" else self.k
        keep = counts >= minimum
        self._identities = ids[keep]
        # Members of eligible identity j: _order[_starts[j] : _starts[j] + _counts[j]]; three arrays
        # rather than a list of millions of small ones (cheap to pickle to spawned workers).
        self._order, self._starts, self._counts = order, starts[keep], counts[keep]
        self._cached_order: tuple[int, np.ndarray] | None = None
        if len(self._identities) < self.p * world_size:
            raise ValueError(
                f"only {len(self._identities)} identities have >= {minimum} images, fewer than p * world_size = "
                f"{self.p * world_size}; lower p or k, or set small_identities='replace'"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._identities) // (self.p * self.world_size)

    def identity_order(self, epoch: int | None = None) -> np.ndarray:
        """Positions into the eligible identities, shuffled by (seed, epoch) alone (epoch
        defaults to the one set by ``set_epoch``)."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cached_order is None or self._cached_order[0] != epoch:
            rng = np.random.default_rng([_ORDER_TAG, self.seed, epoch])
            self._cached_order = (epoch, rng.permutation(len(self._identities)))
        return self._cached_order[1]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(len(self)):
            yield self.batch(step)

    def batch(self, step: int, *, epoch: int | None = None) -> list[int]:
        """Batch ``step`` of ``epoch`` (default: the one set by ``set_epoch``), without
        iterating over the earlier ones: what ``iter(self)`` yields at position ``step``."""
        if not 0 <= step < len(self):
            raise IndexError(f"step must be in [0, {len(self)}), got {step}")
        order = self.identity_order(epoch)
        epoch = self.epoch if epoch is None else int(epoch)
        first = step * self.p * self.world_size + self.rank * self.p
        return [int(i) for pos in order[first : first + self.p] for i in self._images(pos, epoch)]

    def identity_members(self, label: int) -> np.ndarray:
        """All sample indices of an eligible identity, in sample order."""
        pos = int(np.searchsorted(self._identities, label))
        if pos == len(self._identities) or self._identities[pos] != label:
            raise KeyError(f"identity {label} is not among the sampler's {len(self._identities)} eligible identities")
        return self._members(pos)

    def _members(self, pos: int) -> np.ndarray:
        return self._order[self._starts[pos] : self._starts[pos] + self._counts[pos]]

    def _images(self, pos: int, epoch: int) -> np.ndarray:
        members = self._members(pos)
        rng = np.random.default_rng([_IMAGES_TAG, self.seed, epoch, int(self._identities[pos])])
        return rng.choice(members, size=self.k, replace=len(members) < self.k)
