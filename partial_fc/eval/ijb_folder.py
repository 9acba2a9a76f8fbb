"""IJB-B / IJB-C 1:1 verification from the released meta files and loose face crops.

Expected layout (InsightFace's ``IJB_release/IJBC``)::

    ROOT/meta/ijbc_face_tid_mid.txt
    ROOT/meta/ijbc_template_pair_label.txt
    ROOT/meta/ijbc_name_5pts_score.txt
    ROOT/loose_crop/<image name>          e.g. ROOT/loose_crop/1.jpg

(``ijbb_`` for IJB-B). Each loose crop is aligned with its five landmarks to the ArcFace
template at the model's input size, then embedded (with its mirror image unless --no-flip);
templates are aggregated and scored by ``evaluate_ijb``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from partial_fc.data.formats.images import decode_rgb
from partial_fc.util.progress import Progress
from partial_fc.eval.embedding import embed_images
from partial_fc.eval.align import align_face
from partial_fc.eval.ijb import IJBResult, ijb_pair_scores
from partial_fc.eval.ijb_meta import IJBMeta, load_ijb_meta
from partial_fc.eval.roc import DEFAULT_FAR_TARGETS, summarize_roc


def load_ijb_folder(root: str | Path, dataset: str) -> tuple[IJBMeta, list[Path]]:
    """The meta files and the crop path of every image, all checked to exist."""
    root = Path(root)
    if not (root / "meta").is_dir() or not (root / "loose_crop").is_dir():
        raise ValueError(f"--ijb-root {root} must hold meta/ (the {dataset.lower()}_*.txt files) and loose_crop/")
    try:
        meta = load_ijb_meta(root / "meta", dataset=dataset)
    except FileNotFoundError as e:
        raise ValueError(str(e)) from None
    paths = [root / "loose_crop" / name for name in meta.images.image_names]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{len(missing)} of {len(paths)} images listed in the {dataset} meta files are missing "
                         f"from {root / 'loose_crop'}, e.g. {missing[0].name}")
    return meta, paths


def aligned_images(meta: IJBMeta, paths: list[Path], *, size: int) -> Iterator[np.ndarray]:
    for path, landmarks in zip(paths, meta.faces.landmarks):
        yield align_face(decode_rgb(path.read_bytes()), landmarks, size=size)


def evaluate_ijb_folder(
    model: nn.Module, root: str | Path, *, dataset: str, image_size: int, batch_size: int, flip: bool,
    device: torch.device | str, far_targets: ArrayLike = DEFAULT_FAR_TARGETS, progress: bool = True,
) -> tuple[IJBResult, np.ndarray, np.ndarray]:
    """(result, template-pair scores, pair labels)."""
    meta, paths = load_ijb_folder(root, dataset)
    bar = Progress(len(paths), desc=f"embed {dataset}", enabled=progress)
    emb, flipped = embed_images(model, aligned_images(meta, paths, size=image_size), image_size=image_size,
                                batch_size=batch_size, flip=flip, device=device, progress=bar)
    bar.close()
    # evaluate_ijb's steps, keeping the scores for the plots.
    scores = ijb_pair_scores(emb, meta, flipped=flipped)
    result = IJBResult(dataset=meta.dataset, n_images=len(paths), n_templates=int(np.unique(meta.images.templates).size),
                       n_pairs=int(scores.size), roc=summarize_roc(scores, meta.pairs.labels, far_targets=far_targets))
    return result, scores, meta.pairs.labels
