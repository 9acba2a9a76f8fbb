"""``partial-fc embed``: embeddings of an image folder or a shard set.

    partial-fc embed --checkpoint runs/demo --input data/synth --out emb/ --flip

Writes ``OUT/embeddings.npy`` ((n, D) float32, unit rows) and ``OUT/index.jsonl`` (line i:
``{"row": i, "source": path or shard/key, "label": identity or null}``), each atomically.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from partial_fc.util.atomic import write_atomic
from partial_fc.util.progress import Progress
from partial_fc.embed.embedder import embed_images, unit_rows
from partial_fc.embed.sources import open_source
from partial_fc.eval.backbone import load_backbone
from partial_fc.eval.device import add_device_argument, pick_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="run directory (newest checkpoint) or a step-N directory")
    parser.add_argument("--input", required=True,
                        help="folder of identity folders, flat image folder, shard directory (manifest.json) or .tar")
    parser.add_argument("--out", required=True, help="output directory for embeddings.npy and index.jsonl")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--flip", action="store_true", help="sum the mirrored image's embedding in before normalising")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    device = pick_device(args.device)
    model, cfg, step = load_backbone(args.checkpoint, device=device)
    source = open_source(args.input)
    progress = Progress(len(source), desc="embed", enabled=not args.quiet)
    emb, flipped = embed_images(model, source.images(), image_size=cfg.model.input_size, batch_size=args.batch_size,
                                flip=args.flip, device=device, progress=progress)
    progress.close()
    if emb.shape[0] != len(source):
        raise ValueError(f"{args.input}: decoded {emb.shape[0]} images but indexed {len(source)}")
    unit = unit_rows(emb, flipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "embeddings.npy", lambda f: np.save(f, unit))
    lines = "".join(json.dumps({"row": i, "source": k, "label": lab}) + "\n"
                    for i, (k, lab) in enumerate(zip(source.keys, source.labels)))
    write_atomic(out / "index.jsonl", lambda f: f.write(lines.encode("utf-8")))
    print(f"embedded {unit.shape[0]} images ({source.kind}) with {cfg.model.name} at step {step}: "
          f"{out / 'embeddings.npy'} {unit.shape} float32, {out / 'index.jsonl'}")
    return 0
