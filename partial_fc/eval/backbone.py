"""Load a trained backbone from a run directory or one of its ``step-N`` checkpoints.

    model, cfg, step = load_backbone("runs/demo")                      # newest complete checkpoint
    model, cfg, step = load_backbone("runs/demo/checkpoints/step-3000")

The model is built from the run's resolved ``config.yaml`` and gets the backbone weights of
``trainer.pt`` (``partial_fc.checkpoint.TrainerState``: ``engine.model``), read with weights_only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from partial_fc.checkpoint import TrainerState, latest_checkpoint, read_meta
from partial_fc.checkpoint.files import safe_load
from partial_fc.checkpoint.layout import TRAINER, is_temporary, step_of
from partial_fc.config import load_yaml
from partial_fc.config.train import TrainConfig


def resolve_checkpoint(path: str | Path) -> tuple[Path, Path]:
    """(run directory, complete step-N checkpoint directory) for a run or a checkpoint path."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {path} does not exist; expected a run directory (with config.yaml and "
                         f"checkpoints/step-N/) or a checkpoints/step-N directory")
    if step_of(path.name) is not None or is_temporary(path.name):
        read_meta(path)  # ValueError for a temporary or incomplete checkpoint
        return path.parent.parent, path
    if not (path / "config.yaml").is_file():
        raise ValueError(f"{path} is not a run directory: it has no config.yaml (expected <run>/config.yaml "
                         f"and <run>/checkpoints/step-N/)")
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise ValueError(f"run {path} has no complete checkpoint: expected {path}/checkpoints/step-N/ with a "
                         f"meta.json (an unfinished step-N.tmp-* directory does not count)")
    return path, ckpt


def load_backbone(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig, int]:
    """(backbone in eval mode on ``device``, the run's TrainConfig, the checkpoint's step)."""
    run, ckpt = resolve_checkpoint(path)
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise ValueError(f"checkpoint {ckpt} has no run config: expected {config_path} two levels up")
    cfg = load_yaml(config_path, TrainConfig)
    trainer_path = ckpt / TRAINER
    if not trainer_path.is_file():
        raise ValueError(f"checkpoint {ckpt} has no trainer.pt (the backbone weights are written by rank 0)")
    state = TrainerState.from_dict(safe_load(trainer_path), path=trainer_path)
    model = cfg.model.build()
    try:
        model.load_state_dict(state.backbone, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"{trainer_path}: backbone weights do not fit model {cfg.model.name!r} of "
                         f"{config_path}: {first}") from e
    return model.to(device).eval(), cfg, state.step
