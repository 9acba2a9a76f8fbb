"""Mixed precision for backbones: a low-precision body and a float32 embedding layer.

As in arcface_torch, ``fp16=True`` runs the convolutional body under autocast and the final
embedding layers in float32, so the embeddings the head sees are always float32 (the margin
softmax is sensitive to rounding near cos = 1). The low-precision dtype is autocast's default
for the device: float16 on CUDA, bfloat16 on CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor


@contextlib.contextmanager
def low_precision(x: Tensor, *, enabled: bool) -> Iterator[None]:
    """Autocast to the device's default low-precision dtype when `enabled`, else nothing.

    When not enabled an autocast region opened by the caller still applies, so a trainer
    may also turn on autocast around the whole model.
    """
    device_type = x.device.type
    if not enabled or not torch.amp.is_autocast_available(device_type):
        yield
        return
    with torch.autocast(device_type=device_type, dtype=torch.get_autocast_dtype(device_type)):
        yield


@contextlib.contextmanager
def full_precision(x: Tensor) -> Iterator[None]:
    """Switch off any autocast region for the embedding layers."""
    device_type = x.device.type
    if not torch.amp.is_autocast_available(device_type):
        yield
        return
    with torch.autocast(device_type=device_type, enabled=False):
        yield
