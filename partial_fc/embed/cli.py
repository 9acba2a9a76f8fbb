"""``partial-fc embed``: embeddings of an image folder or a shard set.

    partial-fc embed --checkpoint runs/demo --input data/demo --out emb/             # flip-summed
    partial-fc embed --checkpoint runs/demo --input data/demo --out emb/ --no-flip

Writes ``OUT/embeddings.npy`` ((n, D) float32, unit rows) and ``OUT/index.jsonl`` (line i:
``{"row": i, "source": path or shard/key, "label": identity or null}``), each atomically. As in
``eval``, the mirrored image's embedding is summed in before normalising unless ``--no-flip``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from partial_fc.eval.backbone import load_backbone
from partial_fc.eval.device import add_device_argument, pick_device
from partial_fc.eval.embedding import embed_images
from partial_fc.eval.sources import open_source
from partial_fc.metrics.verification import flip_sum_normalize
from partial_fc.util.atomic import write_atomic
from partial_fc.util.progress import Progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a step-N directory")
    parser.add_argument("--input", required=True,
                        help="folder of identity folders, flat image folder, shard directory (manifest.json) or .tar")
    parser.add_argument("--out", required=True, help="output directory for embeddings.npy and index.jsonl")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation (as in eval)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model, cfg, step = load_backbone(args.checkpoint, device=device)
    source = open_source(args.input)
    progress = Progress(len(source), desc="embed", enabled=not args.quiet)
    emb, flipped = embed_images(model, source.images(), image_size=cfg.model.input_size, batch_size=args.batch_size,
                                flip=not args.no_flip, device=device, progress=progress)
    progress.close()
    if emb.shape[0] != len(source):
        raise ValueError(f"{args.input}: decoded {emb.shape[0]} images but indexed {len(source)}")
    unit = flip_sum_normalize(emb, flipped).astype(np.float32)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "embeddings.npy", lambda f: np.save(f, unit))
    lines = "".join(json.dumps({"row": i, "source": k, "label": lab}) + "\n"
                    for i, (k, lab) in enumerate(zip(source.keys, source.labels)))
    write_atomic(out / "index.jsonl", lambda f: f.write(lines.encode("utf-8")))
    print(f"embedded {unit.shape[0]} images ({source.kind}, flip {'off' if args.no_flip else 'on'}) with "
          f"{cfg.model.name} at step {step}: {out / 'embeddings.npy'} {unit.shape} float32, {out / 'index.jsonl'}")
    return 0
