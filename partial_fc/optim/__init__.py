"""Optimizers for the class centers (row-sparse) and learning-rate schedules."""

from partial_fc.optim.row_sparse import RowSparseAdamW, RowSparseSGD

__all__ = ["RowSparseSGD", "RowSparseAdamW"]
