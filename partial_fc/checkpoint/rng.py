"""Random-number-generator states as plain data (tensors, ints, lists), so a checkpoint holding
them loads with ``torch.load(weights_only=True)``; and a deterministic reseed for when the saved
states do not apply (a different world size)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """torch CPU, every CUDA device (when available), numpy's global and Python's ``random``."""
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gauss)},
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def restore_rng_state(state: dict[str, Any]) -> list[str]:
    """Inverse of ``capture_rng_state``. Returns notes for the log: CUDA states are restored for
    the devices both the saving and this process see; a different device count is reported."""
    notes = []
    torch.set_rng_state(state["torch"])
    cuda = state["cuda"]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda and count:
        for device in range(min(count, len(cuda))):
            torch.cuda.set_rng_state(cuda[device], device)
    if len(cuda) != count:
        notes.append(f"the checkpoint holds CUDA RNG states of {len(cuda)} devices, this process sees {count}; "
                     f"restored {min(count, len(cuda))}")
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    return notes


def derived_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed from (seed, step, rank) alone: the same on every run, distinct per rank."""
    digest = hashlib.sha256(f"partial-fc-rng:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def reseed(seed: int, step: int, rank: int) -> int:
    """Seed torch (CPU and CUDA), numpy and ``random`` from ``derived_seed``; returns it."""
    value = derived_seed(seed, step, rank)
    torch.manual_seed(value)  # also seeds every CUDA device
    np.random.seed(value % 2**32)
    random.seed(value)
    return value
