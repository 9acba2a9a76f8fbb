"""The dtypes the class centers may be stored in (the tile computes in fp32 whatever they are).
The head owns the names; the row-sparse optimizers, the planner and the bench read them here."""

from __future__ import annotations

import torch

WEIGHT_STORAGE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
