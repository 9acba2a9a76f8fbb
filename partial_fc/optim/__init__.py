"""Optimizers for the class centers (row-sparse) and learning-rate schedules."""

from partial_fc.optim.footprint import bytes_per_row
from partial_fc.optim.quantized import STATE_DTYPES, WEIGHT_STORAGE, store_weight_as
from partial_fc.optim.row_sparse import RowSparseAdamW, RowSparseSGD

__all__ = ["RowSparseSGD", "RowSparseAdamW", "STATE_DTYPES", "WEIGHT_STORAGE", "store_weight_as", "bytes_per_row"]
