"""Where a resumed run continues in the data, from the samples it has seen.

The checkpoint records samples seen, not a batch index: a batch index means nothing once the
global batch changes (another world size, another ``data.batch_size``). The epoch and the
micro-batch to start from are re-derived from the samples at the resumed run's batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Position:
    epoch: int
    skip: int  # micro-batches of the epoch already read: the loader starts at this one
    samples_seen: int  # where the data and the schedule continue: epoch x epoch_samples + skip x micro_batch
    repeated: int = 0  # samples of the saved count that are read (and counted) again


def resume_position(samples_seen: int, *, epoch_samples: int, micro_batch: int) -> Position:
    """The position ``samples_seen`` samples into the data, at ``epoch_samples`` samples per epoch
    and ``micro_batch`` samples per micro-step over all ranks (both of the resumed run).

    When the samples into the epoch are not a whole number of micro-batches (the saved run's
    global batch does not divide them), the position is rounded down: the remainder, fewer than
    ``micro_batch`` samples, is read a second time, and the schedule and the sample count continue
    from the rounded position, so that the two never disagree. At the saving run's batch sizes the
    position is exact (``repeated`` 0).
    """
    if samples_seen < 0 or epoch_samples < 1 or micro_batch < 1:
        raise ValueError(f"samples_seen must be >= 0 and epoch_samples, micro_batch >= 1, got {samples_seen}, "
                         f"{epoch_samples}, {micro_batch}")
    epoch, into = divmod(samples_seen, epoch_samples)
    skip, repeated = divmod(into, micro_batch)
    return Position(epoch=epoch, skip=skip, samples_seen=samples_seen - repeated, repeated=repeated)


def steps_left(samples_seen: int, *, total_samples: int, global_batch: int) -> int:
    """Optimizer steps of ``global_batch`` samples until ``total_samples`` have been seen."""
    return max(0, -(-(total_samples - samples_seen) // global_batch))
