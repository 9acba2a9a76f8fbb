"""``partial-fc eval``: verification, identification and IJB numbers of a trained backbone.

    partial-fc eval --checkpoint runs/demo --pairs data/demo/heldout.pairs.npz lfw.bin --json eval.json
    partial-fc eval --checkpoint runs/demo --pairs data/demo/heldout.pairs.npz --json - | jq .pairs
    partial-fc eval --checkpoint runs/demo --gallery-probe faces/ --plot-dir plots/
    partial-fc eval --checkpoint runs/demo --ijb-root IJB_release/IJBC --ijb-name IJBC

See docs/evaluation.md ("Commands") for the protocols and the JSON layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from partial_fc.data.formats.pair_files import load_pairs
from partial_fc.eval import plots, report
from partial_fc.eval.backbone import load_backbone, resolve_checkpoint
from partial_fc.eval.device import add_device_argument, pick_device
from partial_fc.eval.roc import DEFAULT_FAR_TARGETS, roc_curve
from partial_fc.eval.sources import open_source
from partial_fc.util.atomic import write_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a step-N directory")
    parser.add_argument("--pairs", nargs="+", default=[], metavar="FILE", help="*.pairs.npz or InsightFace .bin files")
    parser.add_argument("--gallery-probe", nargs="+", default=[], metavar="DIR",
                        help="identity folders (or a shard set): first image(s) of each identity gallery, rest probes")
    parser.add_argument("--gallery-per-identity", type=int, default=1, help="images averaged into a gallery entry")
    parser.add_argument("--nonmated-fraction", type=float, default=0.25,
                        help="fraction of identities (last in sorted order) kept out of the gallery: open-set probes")
    parser.add_argument("--ijb-root", metavar="DIR", help="IJB folder with meta/ and loose_crop/")
    parser.add_argument("--ijb-name", choices=["IJBB", "IJBC"], default="IJBC")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--far", type=float, nargs="+", default=list(DEFAULT_FAR_TARGETS), metavar="RATE",
                        help="FAR (and FPIR) targets (default 1e-6 ... 1e-1)")
    parser.add_argument("--folds", type=int, default=10, help="folds of the pair accuracy (LFW: 10)")
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON to PATH ('-': the JSON on "
                        "stdout, the tables on stderr)")
    parser.add_argument("--plot-dir", metavar="DIR", help="write roc.png and scores.png there")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_device_argument(parser)


def _unique(name: str, taken: dict) -> str:
    k, out = 2, name
    while out in taken:
        out, k = f"{name}#{k}", k + 1
    return out


def run(args: argparse.Namespace) -> int:
    from partial_fc.eval.ijb_folder import evaluate_ijb_folder
    from partial_fc.eval.model_eval import evaluate_gallery_probe, evaluate_pairs

    if not (args.pairs or args.gallery_probe or args.ijb_root):
        raise ValueError("nothing to evaluate: give --pairs, --gallery-probe and/or --ijb-root")
    _, ckpt = resolve_checkpoint(args.checkpoint)
    missing = [p for p in [*args.pairs, *args.gallery_probe] if not Path(p).exists()]
    if missing:
        raise ValueError(f"not found: {missing}")
    device = pick_device(args.device)
    model, cfg, step = load_backbone(ckpt, device=device)
    common = dict(image_size=cfg.model.input_size, batch_size=args.batch_size, flip=not args.no_flip, device=device,
                  far_targets=args.far, progress=not args.quiet)
    pairs, ident, ijb, curves = {}, {}, {}, {}
    for path in args.pairs:
        result = evaluate_pairs(model, load_pairs(path), n_folds=args.folds, **common)
        name = _unique(result.name, pairs)
        pairs[name] = result
        curves[name] = (result.scores, result.issame)
    for path in args.gallery_probe:
        name = _unique(Path(path).name, ident)
        ident[name] = evaluate_gallery_probe(model, open_source(path), gallery_per_identity=args.gallery_per_identity,
                                             nonmated_fraction=args.nonmated_fraction, **common)
    if args.ijb_root:
        result, scores, labels = evaluate_ijb_folder(model, args.ijb_root, dataset=args.ijb_name, **common)
        ijb[args.ijb_name] = result
        curves[_unique(args.ijb_name, curves)] = (scores, labels)

    # With --json - stdout carries only the JSON document; the human-readable lines go to stderr.
    out = sys.stderr if args.json == "-" else sys.stdout

    def say(text: str) -> None:
        print(text, file=out)

    say(f"checkpoint {ckpt} (step {step}, {cfg.model.name}, flip {'off' if args.no_flip else 'on'})")
    if pairs:
        say("\nverification (k-fold accuracy)\n" + report.verification_table({n: r.verification for n, r in pairs.items()}))
    rocs = {**{n: r.roc for n, r in pairs.items()}, **{n: r.roc for n, r in ijb.items()}}
    if rocs:
        say("\nROC (TAR % at FAR; n/a: fewer different pairs than 1/FAR)\n" + report.roc_table(rocs))
    if ident:
        say("\nidentification (rank-k %, DIR % at FPIR)\n" + report.identification_table(ident))

    if args.json:
        doc = {"checkpoint": str(ckpt), "step": step, "model": cfg.model.name, "flip": not args.no_flip,
               "far_targets": list(args.far),
               "pairs": {n: {"verification": r.verification, "roc": r.roc} for n, r in pairs.items()},
               "identification": ident, "ijb": ijb}
        text = report.to_json(doc) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            write_atomic(args.json, lambda f: f.write(text.encode("utf-8")))
            say(f"\nwrote {args.json}")
    if args.plot_dir and curves:
        plot_dir = Path(args.plot_dir)
        roc = plots.plot_roc({n: roc_curve(s, y) for n, (s, y) in curves.items()}, plot_dir / "roc.png")
        hist = plots.plot_score_histograms(curves, plot_dir / "scores.png")
        say(f"wrote {roc.path} and {hist.path}")
    return 0
