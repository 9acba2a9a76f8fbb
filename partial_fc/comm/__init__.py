"""Every torch.distributed call of the project lives in this package."""

from partial_fc.comm.collectives import Collectives, ProcessGroupCollectives, SingleProcess, make_collectives
from partial_fc.comm.autograd import gather_with_grad

__all__ = ["Collectives", "ProcessGroupCollectives", "SingleProcess", "make_collectives", "gather_with_grad"]
