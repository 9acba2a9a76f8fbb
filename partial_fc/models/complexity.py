"""Parameter and multiply-accumulate counts, for comparing backbones with published figures.

Face-recognition papers and arcface_torch quote "FLOPs" that are multiply-accumulates of the
convolutions and linear layers (r50: 6.3G, MobileFaceNet: 221M "MAdds"); `count_macs` counts
the same thing. Build the model under ``torch.device("meta")`` to count a big one for free.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def count_parameters(net: nn.Module, *, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


def count_macs(net: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of Conv2d and Linear layers for one (3, input_size, input_size) image.

    Runs one forward pass of a batch of 2 (BatchNorm refuses 1 in training mode) on the device
    of `net`'s parameters; norms, activations and additions are not counted.
    """
    total = 0

    def add(module: nn.Module, _inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        per_sample = output.numel() // output.shape[0]
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += per_sample * (module.in_channels // module.groups) * kh * kw
        else:
            total += per_sample * module.in_features

    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [m.register_forward_hook(add) for m in layers]
    device = next(net.parameters()).device
    try:
        with torch.no_grad():
            net(torch.zeros(2, 3, input_size, input_size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return total
