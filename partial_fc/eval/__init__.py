"""Face-recognition evaluation: pure functions from embeddings / scores / labels to results,
and the commands that run a backbone to get them.

roc             exact ROC, TAR at FAR, EER, AUC
identification  gallery/probe rank-k, CMC, open-set DIR at FPIR
ijb_meta, ijb   IJB-B / IJB-C meta files and 1:1 template verification
report          text tables and JSON
plots           ROC, score histograms, training curves (PNG)
sources         images of folders and shard sets; embedding: the one batched forward pass
model_eval      pair sets (also during training, over ranks) and gallery/probe splits
cli             ``partial-fc eval``

The k-fold pair accuracy (InsightFace `evaluate`) and flip-sum normalisation live one floor
lower, in ``partial_fc.metrics``, because the raw-pixel baseline of data/ uses them too; they
are re-exported here. See docs/evaluation.md for the exact definitions and their sources.
"""

from partial_fc.eval.identification import IdentificationResult, identify, score_probes
from partial_fc.eval.ijb import IJBResult, aggregate_templates, evaluate_ijb, ijb_pair_scores
from partial_fc.eval.ijb_meta import IJBMeta, load_ijb_meta
from partial_fc.eval.roc import DEFAULT_FAR_TARGETS, RocCurve, RocSummary, roc_curve, summarize_roc
from partial_fc.metrics.verification import (
    VerificationResult,
    flip_sum_normalize,
    verify_interleaved,
    verify_pairs,
    verify_scores,
)

__all__ = [
    "DEFAULT_FAR_TARGETS",
    "IJBMeta",
    "IJBResult",
    "IdentificationResult",
    "RocCurve",
    "RocSummary",
    "VerificationResult",
    "aggregate_templates",
    "evaluate_ijb",
    "flip_sum_normalize",
    "identify",
    "ijb_pair_scores",
    "load_ijb_meta",
    "roc_curve",
    "score_probes",
    "summarize_roc",
    "verify_interleaved",
    "verify_pairs",
    "verify_scores",
]
