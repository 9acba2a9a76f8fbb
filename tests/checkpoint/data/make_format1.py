"""How ``step-2/`` beside this file was written: by the checkpoint code as it was before it became
``partial_fc.checkpoint`` (``partial_fc.train.checkpoint``), at world size 2. It imports that old
code, so it runs only in the tree of commit 13615c3:

    git archive 13615c3 | tar -x -C /tmp/old
    cp tests/checkpoint/data/make_format1.py /tmp/old && cd /tmp/old && python make_format1.py /tmp/run
    cp -r /tmp/run/checkpoints/step-2 <repo>/tests/checkpoint/data/
"""

import shutil
import sys
from pathlib import Path

import torch

from partial_fc import PartialFC
from partial_fc.comm import make_collectives
from partial_fc.optim import RowSparseSGD
from partial_fc.train.checkpoint import save_checkpoint
from tests.distributed import run_ranks


def save(rank: int, world: int, out: str) -> None:
    comm = make_collectives()
    head = PartialFC(10, 4, margin="cosface", sample_rate=0.5, seed=5)
    opt = RowSparseSGD([head.weight], lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(rank)
    for _ in range(2):
        head(torch.randn(3, 4, generator=g), torch.randint(0, 10, (3,), generator=g)).backward()
        opt.step()
        opt.zero_grad()
    torch.manual_seed(50 + rank)  # the RNG state the files hold
    state = {"engine": {"model": {"w": torch.arange(6.0).view(2, 3)}, "optimizer": {"state": {}, "param_groups": []}},
             "step": 2, "samples_seen": 12}
    save_checkpoint(out, 2, comm=comm, head=head, head_optimizer=opt, trainer_state=state,
                    meta_extra={"arch": "toy"}, keep_last=1)


if __name__ == "__main__":
    shutil.rmtree(sys.argv[1], ignore_errors=True)
    run_ranks(save, 2, str(Path(sys.argv[1])))
