"""Embeddings of image folders and shard sets with a trained backbone (``partial-fc embed``).

sources   iterate images of an identity-per-folder tree, a flat folder, or webdataset shards
embedder  batched forward passes (optionally with the mirrored image summed in)
"""

from partial_fc.embed.embedder import embed_images, unit_rows
from partial_fc.embed.sources import ImageSource, open_source

__all__ = ["ImageSource", "embed_images", "open_source", "unit_rows"]
