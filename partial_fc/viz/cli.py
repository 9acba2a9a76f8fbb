"""``partial-fc viz``: figures.

    partial-fc viz curves --checkpoint runs/demo [--keys loss lr samples_per_s] [--out curves.png]
    partial-fc viz margins --out margins.png [--margins softmax sphereface cosface arcface] [--dims 2 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MARGINS = ("softmax", "sphereface", "cosface", "arcface")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="figure", metavar="FIGURE")
    sub.required = True
    curves = sub.add_parser("curves", help="training curves from <run>/metrics.jsonl")
    curves.add_argument("--checkpoint", required=True, metavar="RUN",
                        help="run directory, or one of its checkpoints/step-N directories (as in eval, embed, export)")
    curves.add_argument("--keys", nargs="+", default=["loss", "lr", "samples_per_s"])
    curves.add_argument("--out", help="PNG to write (default <run>/training_curves.png)")
    m = sub.add_parser("margins", help="2-D / 3-D features learnt with each margin (SphereFace/ArcFace figure)")
    m.add_argument("--out", required=True, help="PNG to write")
    m.add_argument("--margins", nargs="+", default=list(DEFAULT_MARGINS), help="names from partial_fc.margins.names()")
    m.add_argument("--dims", type=int, nargs="+", default=[2, 3], choices=[2, 3], help="feature dimensions (rows)")
    m.add_argument("--classes", type=int, default=8)
    m.add_argument("--steps", type=int, default=120, help="full-batch Adam steps per panel")
    m.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    from partial_fc.eval.plots import plot_training_curves

    if args.figure == "curves":
        run_dir = _run_dir(Path(args.checkpoint))
        metrics = run_dir / "metrics.jsonl"
        if not metrics.is_file():
            raise ValueError(f"run {run_dir} has no metrics.jsonl (expected {metrics})")
        out = args.out or run_dir / "training_curves.png"
        result = plot_training_curves(metrics, out, keys=args.keys)
    else:
        from partial_fc.viz.margin_demo import plot_margins

        if args.classes < 2 or args.steps < 1:
            raise ValueError(f"--classes must be >= 2 and --steps >= 1, got {args.classes} and {args.steps}")
        result = plot_margins(args.margins, args.out, dims=args.dims, num_classes=args.classes, steps=args.steps,
                              seed=args.seed)
    print(f"wrote {result.path} ({result.n_panels} panels)")
    return 0


def _run_dir(path: Path) -> Path:
    """The run a --checkpoint names: the path itself, or <run> of <run>/checkpoints/step-N (the
    curves come from the whole run, not from one checkpoint)."""
    if not path.exists():
        raise ValueError(f"--checkpoint {path} does not exist; expected a run directory (with metrics.jsonl)")
    return path.parent.parent if path.parent.name == "checkpoints" else path
