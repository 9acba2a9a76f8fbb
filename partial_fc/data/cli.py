"""`partial-fc data ...`: make training shards and verification pairs.

    partial-fc data synth --out data/synth --identities 1000 --images-per-identity 20 --workers 2
    partial-fc data convert --from folder ~/faces --out data/faces
    partial-fc data convert --from rec ~/ms1m-retinaface-t1/train --out data/ms1mv3
    partial-fc data convert --from bin ~/ms1m-retinaface-t1/lfw.bin --out data/verification
    partial-fc data baseline data/synth/heldout.pairs.npz
    partial-fc data info data/synth
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

_MB = 1 << 20


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="generate synthetic face-like identities (the offline default data set)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--identities", type=int, default=1000, help="training identities (default 1000)")
    p.add_argument("--images-per-identity", type=int, default=20, help="default 20")
    p.add_argument("--size", type=int, default=112, help="image side in pixels (default 112)")
    p.add_argument("--seed", type=int, default=0, help="everything is a function of this (default 0)")
    p.add_argument("--heldout-identities", type=int, default=200, help="identities for verification pairs only (default 200)")
    p.add_argument("--pairs", type=int, default=2000, help="verification pairs, half same, half different (default 2000)")
    p.add_argument("--workers", type=int, default=1, help="rendering processes (default 1)")
    p.add_argument("--shard-samples", type=int, default=2000, help="samples per shard at most (default 2000)")
    p.add_argument("--shard-size-mb", type=int, default=1024, help="shard size cap in MiB (default 1024)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="folder of identity folders or InsightFace RecordIO -> shards; InsightFace .bin -> pairs",
        description="folder: SRC/<identity>/<images>; rec: PREFIX for PREFIX.rec (+ PREFIX.idx); "
        "bin: an InsightFace verification .bin, written as OUT/<name>.pairs.npz",
    )
    p.add_argument("--from", dest="source_kind", choices=("folder", "rec", "bin"), required=True)
    p.add_argument("source", type=Path, metavar="SRC", help="folder, RecordIO prefix, or .bin file")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--shard-size-mb", type=int, default=1024, help="shard size cap in MiB (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed of the global shuffle (default 0)")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)), help="encoding processes")
    p.add_argument("--jpeg-quality", type=int, default=95, help="for images that must be re-encoded (default 95)")
    p.add_argument("--verify-decode", action="store_true", help="fully decode every JPEG (slower; default checks headers)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True
    _add_synth(sub)
    _add_convert(sub)
    p = sub.add_parser("baseline", help="raw-pixel verification accuracy of a pair file (.pairs.npz or .bin)")
    p.add_argument("pairs", type=Path)
    p = sub.add_parser("info", help="summarise a shard directory's manifest (--check: verify the shards against it)")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--check", action="store_true",
                   help="read every tar header: missing, short or damaged shards, labels out of range (exit 1 if any)")
    p.add_argument("--decode", action="store_true", help="with --check, also decode every image (slow)")


def _run_synth(args: argparse.Namespace) -> int:
    from partial_fc.data.synth.config import SynthConfig
    from partial_fc.data.synth.generate import generate

    config = SynthConfig(
        out_dir=args.out,
        identities=args.identities,
        images_per_identity=args.images_per_identity,
        size=args.size,
        seed=args.seed,
        heldout_identities=args.heldout_identities,
        pairs=args.pairs,
        workers=args.workers,
        shard_samples=args.shard_samples,
        shard_size_bytes=args.shard_size_mb * _MB,
    )
    result = generate(config, show_progress=not args.quiet)
    per_worker = result.images_per_second / config.workers
    print(f"wrote {result.train_images} training images to {config.out_dir} in {result.train_seconds:.1f}s "
          f"({result.images_per_second:,.0f} img/s, {per_worker:,.0f} per worker)")  # fmt: skip
    if result.pairs_path is not None:
        print(f"wrote {config.pairs} verification pairs to {result.pairs_path}; raw-pixel baseline "
              f"accuracy {result.baseline_accuracy:.4f} +- {result.baseline_std:.4f} (10-fold)")  # fmt: skip
    print(f"manifest: {result.manifest_path}")
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    if args.source_kind == "bin":
        from partial_fc.data.formats.insightface_bin import check_decodes, read_insightface_bin
        from partial_fc.data.formats.pairs import PAIRS_SUFFIX, save_pairs

        pairs = read_insightface_bin(args.source)
        check_decodes(pairs, args.source)  # a few thousand images: always worth it
        args.out.mkdir(parents=True, exist_ok=True)
        path = save_pairs(args.out / f"{pairs.name}{PAIRS_SUFFIX}", pairs)
        print(f"wrote {pairs.num_pairs} pairs ({int(pairs.issame.sum())} same) to {path}")
        return 0

    from partial_fc.data.convert.common import ConvertConfig

    config = ConvertConfig(
        out_dir=args.out,
        shard_size_bytes=args.shard_size_mb * _MB,
        seed=args.seed,
        workers=args.workers,
        jpeg_quality=args.jpeg_quality,
        verify_decode=args.verify_decode,
        show_progress=not args.quiet,
    )
    if args.source_kind == "folder":
        from partial_fc.data.convert.folder import convert_folder

        manifest = convert_folder(args.source, config)
    else:
        from partial_fc.data.convert.rec import convert_rec

        manifest = convert_rec(args.source, config)
    print(f"wrote {manifest.num_samples} samples of {manifest.num_classes} classes "
          f"in {len(manifest.shards)} shards to {args.out}")  # fmt: skip
    if manifest.skipped:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in manifest.skipped.items()))
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    from partial_fc.data.baseline import pixel_baseline
    from partial_fc.data.formats.pair_files import load_pairs

    pairs = load_pairs(args.pairs)
    result = pixel_baseline(pairs)
    print(f"{pairs.name}: {pairs.num_pairs} pairs, raw-pixel verification accuracy {result.accuracy_mean:.4f} "
          f"+- {result.accuracy_std:.4f} ({result.n_folds}-fold)")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from partial_fc.data.formats.manifest import load_manifest

    m = load_manifest(args.data_dir)
    sizes = [s.num_samples for s in m.shards] or [0]
    print(f"{args.data_dir}: {m.num_samples} samples, {m.num_classes} classes, {len(m.shards)} shards "
          f"({min(sizes)}-{max(sizes)} samples each), source {m.source.get('kind')}")  # fmt: skip
    if m.skipped:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in m.skipped.items()))
    if not args.check:
        return 0
    from partial_fc.data.loaders.shard_check import audit

    found, shown = audit(str(args.data_dir), decode=args.decode), 10
    for kind, lines in found.items():
        for line in lines[:shown]:
            print(f"problem: {line}")
        if len(lines) > shown:
            print(f"problem: ... and {len(lines) - shown} more {kind} problems")
    counts = ", ".join(f"{len(lines)} {kind} problems" for kind, lines in found.items() if lines) or "no problem found"
    print(f"check: {counts}{'' if args.decode else ' (images not decoded; --decode decodes them)'}")
    return 1 if any(found.values()) else 0


def run(args: argparse.Namespace) -> int:
    commands = {"synth": _run_synth, "convert": _run_convert, "baseline": _run_baseline, "info": _run_info}
    try:
        return commands[args.data_command](args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"partial-fc data {args.data_command}: error: {err}", file=sys.stderr)
        return 2
