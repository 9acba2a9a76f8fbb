"""``partial-fc export``: the backbone as ONNX or TorchScript, batch dimension dynamic.

    partial-fc export --checkpoint runs/demo --format onnx --out r50.onnx --opset 17
    partial-fc export --checkpoint runs/demo --format torchscript --out r50.pt
"""

from __future__ import annotations

import argparse

from partial_fc.eval.backbone import load_backbone
from partial_fc.export.exporters import PARITY_BATCH_SIZES, export_onnx, export_torchscript


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a step-N directory")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    parser.add_argument("--out", required=True, help="file to write (atomically, only after the parity check)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--atol", type=float, default=1e-4, help="largest allowed max abs difference from eager")


def run(args: argparse.Namespace) -> int:
    model, cfg, step = load_backbone(args.checkpoint, device="cpu")
    size = cfg.model.input_size
    if args.format == "onnx":
        diff = export_onnx(model, args.out, image_size=size, opset=args.opset, atol=args.atol)
        checked = "onnxruntime"
    else:
        diff = export_torchscript(model, args.out, image_size=size, atol=args.atol)
        checked = "torch.jit.load"
    print(f"exported {cfg.model.name} (step {step}) to {args.out} ({args.format}, input (batch, 3, {size}, {size}))")
    print(f"parity vs eager ({checked}, batches of {' and '.join(map(str, PARITY_BATCH_SIZES))}): "
          f"max abs diff {diff:.3g}")
    return 0
