"""The one schema of ``trainer.pt``, the file rank 0 writes for the trainer:

    {"engine": engine.state_dict(), "step": N, "samples_seen": S}

``engine`` is the backbone engine's state: ``model`` (the backbone's state dict), ``optimizer``,
``scaler``... The trainer resumes from all of it; evaluation, export and embedding read only
``engine.model``. (``save_checkpoint`` also takes any plain-data dict, for callers with a
trainer of their own.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_KEYS = ("engine", "step", "samples_seen")


@dataclass(frozen=True)
class TrainerState:
    engine: dict[str, Any]
    step: int
    samples_seen: int

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "step": int(self.step), "samples_seen": int(self.samples_seen)}

    @classmethod
    def from_dict(cls, data: Any, *, path: str | Path) -> TrainerState:
        """``data`` as loaded from ``path``; ValueError naming what is missing."""
        missing = [key for key in _KEYS if key not in data] if isinstance(data, dict) else list(_KEYS)
        if missing:
            raise ValueError(f"{path} lacks {missing}: a trainer.pt holds {list(_KEYS)}")
        if not isinstance(data["engine"], dict) or not isinstance(data["engine"].get("model"), dict):
            raise ValueError(f"{path} lacks engine.model (the backbone state dict)")
        return cls(engine=data["engine"], step=int(data["step"]), samples_seen=int(data["samples_seen"]))

    @property
    def backbone(self) -> dict[str, torch.Tensor]:
        """The backbone's state dict."""
        return self.engine["model"]
