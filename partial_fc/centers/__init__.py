"""Class-table operations on a checkpoint: export every class center as one matrix, grow a
trained head by new classes (rows from the seed rule or from the mean embedding of their
images) into a new complete checkpoint. The reading and writing of the checkpoint itself live
in ``partial_fc.checkpoint.class_table`` and ``partial_fc.checkpoint.grow``."""
