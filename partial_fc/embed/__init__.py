"""``partial-fc embed``: write the embeddings of an image folder or a shard set to disk.

The image sources and the batched forward pass are evaluation's own
(``partial_fc.eval.sources``, ``partial_fc.eval.embedding``), so what ``embed`` writes is what
``eval`` scores.
"""
