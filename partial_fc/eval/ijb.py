"""IJB-B / IJB-C 1:1 template verification, following InsightFace's `eval_ijbc.py`.

Per image: embedding (+ flipped embedding), optionally L2-normalised, optionally multiplied by the
detector score. Per (template, media) group: the mean of its images (frames of one video count
once). Per template: the sum of its media, L2-normalised. A template pair scores the cosine of
its two template embeddings; the ROC of those scores against the pair labels is the result.

InsightFace's defaults are flip sum, no per-image normalisation (the embedding norm acts as a
quality weight) and detector-score weighting; `aggregate_templates` has the same defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from partial_fc.eval.ijb_meta import IJBMeta
from partial_fc.metrics.inputs import as_embeddings, as_scores, l2_normalize
from partial_fc.eval.roc import DEFAULT_FAR_TARGETS, RocSummary, summarize_roc


@dataclass(frozen=True)
class TemplateEmbeddings:
    template_ids: np.ndarray  # (n_templates,) int64, ascending
    embeddings: np.ndarray  # (n_templates, dim) float64, unit rows


@dataclass(frozen=True)
class IJBResult:
    dataset: str
    n_images: int
    n_templates: int
    n_pairs: int
    roc: RocSummary


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal key tuples in already-sorted key arrays."""
    change = np.zeros(keys[0].size, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    return np.flatnonzero(change)


def aggregate_templates(
    embeddings: ArrayLike,
    *,
    templates: ArrayLike,
    medias: ArrayLike,
    flipped: ArrayLike | None = None,
    detector_scores: ArrayLike | None = None,
    normalize_images: bool = False,
) -> TemplateEmbeddings:
    """Template embeddings from image embeddings (n_images, dim) and per-image template/media ids.

    `flipped` is summed in before anything else; `normalize_images` L2-normalises each image
    vector after that; `detector_scores` (n_images,) then scale each image vector.
    """
    x = as_embeddings(embeddings, name="embeddings")
    n = x.shape[0]
    t = np.asarray(templates)
    m = np.asarray(medias)
    for name, ids in (("templates", t), ("medias", m)):
        if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"{name} must be an integer array of shape ({n},) (one id per image), "
                f"got dtype {ids.dtype} shape {ids.shape}"
            )
    if flipped is not None:
        f = as_embeddings(flipped, name="flipped")
        if f.shape != x.shape:
            raise ValueError(f"flipped must have the shape of embeddings {x.shape}, got {f.shape}")
        x = x + f
    if normalize_images:
        x = l2_normalize(x, name="image embeddings")
    if detector_scores is not None:
        w = as_scores(detector_scores, name="detector_scores")
        if w.shape != (n,):
            raise ValueError(f"detector_scores must have shape ({n},), got {w.shape}")
        x = x * w[:, None]

    order = np.lexsort((m, t))  # by template, then media
    t_sorted, m_sorted = t[order], m[order]
    media_starts = _group_starts(t_sorted, m_sorted)
    media_sizes = np.diff(np.r_[media_starts, n])
    # float64 accumulation without a float64 copy of the whole image matrix.
    media_mean = np.add.reduceat(x[order], media_starts, axis=0, dtype=np.float64)
    media_mean /= media_sizes[:, None]
    media_template = t_sorted[media_starts]
    template_starts = _group_starts(media_template)
    template_sum = np.add.reduceat(media_mean, template_starts, axis=0)
    template_ids = media_template[template_starts].astype(np.int64)
    norms = np.linalg.norm(template_sum, axis=1)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise ValueError(
            f"template {template_ids[zero[0]]} aggregates to a zero vector (all its images have "
            f"detector score 0 or zero embeddings); cannot normalise it"
        )
    return TemplateEmbeddings(template_ids, template_sum / norms[:, None])


def template_pair_scores(
    templates: TemplateEmbeddings,
    *,
    template1: ArrayLike,
    template2: ArrayLike,
    block_size: int = 100_000,
) -> np.ndarray:
    """Cosine score of each pair (template1[i], template2[i]), `block_size` pairs at a time."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    ids = templates.template_ids
    a = np.asarray(template1)
    b = np.asarray(template2)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"template1 and template2 must be 1-D of equal length, got {a.shape} and {b.shape}"
        )
    rows = []
    for name, col in (("template1", a), ("template2", b)):
        pos = np.clip(np.searchsorted(ids, col), 0, ids.size - 1)
        missing = np.flatnonzero(ids[pos] != col)
        if missing.size:
            i = missing[0]
            raise ValueError(f"{name}[{i}] = {col[i]} is not a template with any image")
        rows.append(pos)
    scores = np.empty(a.size, dtype=np.float64)
    e = templates.embeddings
    for s in range(0, a.size, block_size):
        stop = min(s + block_size, a.size)
        scores[s:stop] = np.einsum("ij,ij->i", e[rows[0][s:stop]], e[rows[1][s:stop]])
    return scores


def ijb_pair_scores(
    embeddings: ArrayLike,
    meta: IJBMeta,
    *,
    flipped: ArrayLike | None = None,
    use_detector_score: bool = True,
    normalize_images: bool = False,
) -> np.ndarray:
    """Scores of all template pairs of `meta`; row i of `embeddings` is meta.images image i."""
    n = len(meta.images.image_names)
    x = np.asarray(embeddings)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(
            f"embeddings must have one row per image of the {meta.dataset} meta files ({n}), "
            f"got shape {x.shape}"
        )
    tmpl = aggregate_templates(
        x,
        templates=meta.images.templates,
        medias=meta.images.medias,
        flipped=flipped,
        detector_scores=meta.faces.detector_scores if use_detector_score else None,
        normalize_images=normalize_images,
    )
    return template_pair_scores(tmpl, template1=meta.pairs.template1, template2=meta.pairs.template2)


def evaluate_ijb(
    embeddings: ArrayLike,
    meta: IJBMeta,
    *,
    flipped: ArrayLike | None = None,
    use_detector_score: bool = True,
    normalize_images: bool = False,
    far_targets: ArrayLike = DEFAULT_FAR_TARGETS,
) -> IJBResult:
    """The 1:1 protocol end to end: template aggregation, pair scores, TAR at FAR / EER / AUC."""
    scores = ijb_pair_scores(
        embeddings,
        meta,
        flipped=flipped,
        use_detector_score=use_detector_score,
        normalize_images=normalize_images,
    )
    return IJBResult(
        dataset=meta.dataset,
        n_images=len(meta.images.image_names),
        n_templates=int(np.unique(meta.images.templates).size),
        n_pairs=int(scores.size),
        roc=summarize_roc(scores, meta.pairs.labels, far_targets=far_targets),
    )
