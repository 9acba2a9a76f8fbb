"""Pure verification math on numpy arrays, below every package that needs it.

inputs        checks of embeddings, scores, same/different labels and rate targets
verification  the k-fold pair protocol (LFW / InsightFace `evaluate`) and flip-sum normalisation

data/ (the raw-pixel baseline of a pair file), eval/ (every evaluation command) and train/
(verification during training) all score pairs with this one protocol; it imports nothing of
partial_fc, so any of them may import it without a package cycle.
"""
