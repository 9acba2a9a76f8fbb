"""Export a backbone and check the exported file against eager PyTorch.

Both exporters write to a temporary file beside ``out``, reload it, compare it with the eager
model on random batches of 2 and 5 images (two sizes prove the batch dimension is dynamic), and
only then move it into place with os.replace. They return the largest absolute difference.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from partial_fc.util.atomic import atomic_path

PARITY_BATCH_SIZES = (2, 5)


def _atomic(out: str | Path, write_and_check: Callable[[Path], float]) -> float:
    with atomic_path(out) as tmp:
        return write_and_check(tmp)


def _inputs(image_size: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(b, 3, image_size, image_size, generator=g) * 2 - 1 for b in PARITY_BATCH_SIZES]


def _check(diff: float, atol: float, what: str) -> float:
    if not diff <= atol:  # also catches NaN
        raise ValueError(f"{what} differs from eager PyTorch by {diff:.3g} (max abs) > --atol {atol:g}; "
                         f"not written")
    return diff


@torch.no_grad()
def export_onnx(model: nn.Module, out: str | Path, *, image_size: int, opset: int = 17, atol: float = 1e-4,
                seed: int = 0) -> float:
    """ONNX file with input ``images`` (batch, 3, S, S) and output ``embeddings`` (batch, D);
    checked with onnxruntime (CPU). Returns the max abs difference over both test batches."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError("ONNX export needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    model = model.eval().cpu()
    batches = _inputs(image_size, seed)

    def write_and_check(tmp: Path) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
            torch.onnx.export(model, (batches[0],), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["embeddings"],
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}})
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        diff = max(float(np.abs(session.run(None, {"images": x.numpy()})[0] - model(x).numpy()).max())
                   for x in batches)
        return _check(diff, atol, "ONNX (onnxruntime) output")

    return _atomic(out, write_and_check)


@torch.no_grad()
def export_torchscript(model: nn.Module, out: str | Path, *, image_size: int, atol: float = 1e-4,
                       seed: int = 0) -> float:
    """Traced TorchScript module (load with ``torch.jit.load``), checked against eager."""
    model = model.eval().cpu()
    batches = _inputs(image_size, seed)

    def write_and_check(tmp: Path) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, (batches[0],), check_trace=False)
            torch.jit.save(traced, str(tmp))
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        diff = max(float((loaded(x) - model(x)).abs().max()) for x in batches)
        return _check(diff, atol, "TorchScript output")

    return _atomic(out, write_and_check)
