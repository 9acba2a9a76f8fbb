"""`partial-fc centers`: the class table of a checkpoint, exported or grown.

    partial-fc centers export --checkpoint runs/r50 --out centers.npy [--normalize]
    partial-fc centers grow --checkpoint runs/r50 --add 1000 --out runs/r50-plus            # seed rule
    partial-fc centers grow --checkpoint runs/r50 --add 3 --from-images new_ids/ --out runs/r50-plus

``--checkpoint`` is a run directory (its newest checkpoint) or a ``step-N`` directory, saved at
any world size; no process group is needed. ``export`` writes the (C K, D) matrix, row c K + k
being sub-center k of class c. ``grow`` writes a new run directory whose checkpoint has the
classes C .. C + N - 1 added (see ``partial_fc.centers.grow``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from partial_fc.eval.device import add_device_argument, pick_device

FORMATS = ("npy", "safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="centers_command", metavar="ACTION")
    sub.required = True
    export = sub.add_parser("export", help="all class centers as one (C x K, D) matrix")
    export.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a step-N directory")
    export.add_argument("--out", required=True, help="output file, e.g. centers.npy")
    export.add_argument("--format", choices=FORMATS, default="npy",
                        help="npy (safetensors: not available, its package is not a dependency)")
    export.add_argument("--normalize", action="store_true", help="unit rows (float32)")
    grow = sub.add_parser("grow", help="a new run directory whose checkpoint has N more classes")
    grow.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a step-N directory")
    grow.add_argument("--add", type=int, required=True, help="N, the new classes (ids C .. C + N - 1)")
    grow.add_argument("--from-images", metavar="DIR",
                      help="rows from the unit mean embedding of each identity's images: one sub-folder per "
                           "identity, or a shard directory with manifest.json (N must equal the identities)")
    grow.add_argument("--out", required=True, help="the new run directory")
    grow.add_argument("--world-size", type=int, help="ranks the grown checkpoint is written for (default: the saved)")
    grow.add_argument("--init-std", type=float, help="seed rule: std of the new rows (default: the run's head.init_std)")
    grow.add_argument("--batch-size", type=int, default=128, help="--from-images: images per forward pass")
    grow.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(grow)


def run(args: argparse.Namespace) -> int:
    return _export(args) if args.centers_command == "export" else _grow(args)


def _export(args: argparse.Namespace) -> int:
    from partial_fc.centers.export import export_npy
    from partial_fc.checkpoint.class_table import open_class_table
    from partial_fc.eval.backbone import resolve_checkpoint

    if args.format == "safetensors":  # the package is not a dependency of this project (nor installed with it)
        raise ValueError(f"--format safetensors for {args.out}: only .npy is written (the safetensors package is "
                         f"not a dependency); use --format npy")
    _, ckpt = resolve_checkpoint(args.checkpoint)
    table = open_class_table(ckpt)
    shape, dtype = export_npy(table, args.out, normalize=args.normalize)
    k = table.rows_per_class
    rows = f"row c*{k}+k: sub-center k of class c" if k > 1 else "row c: class c"
    print(f"exported {table.num_classes:,} classes of {ckpt} (world size {table.meta['world_size']}, step "
          f"{table.meta['step']}) to {args.out}: {shape} {dtype}{', unit rows' if args.normalize else ''} ({rows})")
    return 0


def _grow(args: argparse.Namespace) -> int:
    from partial_fc.centers.grow import grow_run

    grown = grow_run(args.checkpoint, args.out, add=args.add, from_images=args.from_images,
                     world_size=args.world_size, init_std=args.init_std, batch_size=args.batch_size,
                     device=pick_device(args.device), progress=not args.quiet)
    for note in grown.notes:
        print(f"note: {note}")
    config = Path(args.out) / "config.yaml"
    how = (f"partial-fc train --config {config} --set data.train=... train.max_steps=..." if config.is_file()
           else f"partial-fc train --resume {grown.checkpoint} with head.num_classes={grown.num_classes}")
    print(f"grew {grown.old_classes:,} classes to {grown.num_classes:,} (new rows from the "
          f"{'mean embedding of their images' if grown.rows == 'images' else 'seed rule'}): {grown.checkpoint}; "
          f"fine-tune with: {how}")
    return 0
