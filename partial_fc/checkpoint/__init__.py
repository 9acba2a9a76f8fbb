"""Checkpoints: a run resumes exactly at the same world size and reshards the head to another.

    path = save_checkpoint(run_dir, step, comm=comm, head=head, head_optimizer=head_opt,
                           trainer_state=TrainerState(engine=engine.state_dict(), step=step, samples_seen=n))
    state = TrainerState.from_dict(load_checkpoint(latest_checkpoint(run_dir), comm=comm, head=head,
                                                   head_optimizer=head_opt), path=path)

On disk (docs/checkpoints.md): ``<run_dir>/checkpoints/step-<N>/`` with ``meta.json`` (written
last), ``trainer.pt`` (rank 0), ``head-rank<r>.pt`` and ``rng-rank<r>.pt`` per rank. Every file
loads with ``torch.load(weights_only=True)``; nothing else is ever unpickled. The modules:
``layout`` (names, discovery, pruning), ``meta`` and ``files`` (what is written and how),
``save`` / ``load`` (the protocol on every rank, agreed through ``partial_fc.comm.agree``),
``head_state`` / ``optimizer_state`` / ``reshard`` (the class rows), ``rng``, ``trainer_state``.
"""

from partial_fc.checkpoint.layout import checkpoints_root, latest_checkpoint, list_checkpoints
from partial_fc.checkpoint.load import load_checkpoint
from partial_fc.checkpoint.meta import FORMAT_VERSION, read_meta
from partial_fc.checkpoint.save import save_checkpoint
from partial_fc.checkpoint.trainer_state import TrainerState

__all__ = ["FORMAT_VERSION", "TrainerState", "checkpoints_root", "latest_checkpoint", "list_checkpoints",
           "load_checkpoint", "read_meta", "save_checkpoint"]
