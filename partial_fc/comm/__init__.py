"""The project's torch.distributed calls: collectives, the differentiable all-gather, process-group
set-up (``process_group``) and local spawned ranks (``local``). The exceptions are the backbone
engines, where torch and DeepSpeed make the data-parallel collectives: ``engine/ddp.py`` asks
``dist`` for the world size and wraps the model in DistributedDataParallel (parameter broadcast,
gradient all-reduce), and ``engine/zero.py`` lets ``deepspeed.initialize`` do the same."""

from partial_fc.comm.collectives import Collectives, ProcessGroupCollectives, SingleProcess, make_collectives
from partial_fc.comm.autograd import gather_with_grad

__all__ = ["Collectives", "ProcessGroupCollectives", "SingleProcess", "make_collectives", "gather_with_grad"]
