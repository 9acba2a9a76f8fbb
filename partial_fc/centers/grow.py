"""``partial-fc centers grow``: a run directory whose checkpoint has N more classes, ready to fine-tune.

Writes ``NEW_RUN/config.yaml`` (the source run's, with ``run_dir`` NEW_RUN and
``head.num_classes`` C + N), ``NEW_RUN/new_classes.json`` (which identity became which class)
and ``NEW_RUN/checkpoints/step-<N>/`` (``partial_fc.checkpoint.grow``). Then

    partial-fc train --config NEW_RUN/config.yaml --set data.train=NEW_DATA train.max_steps=M

resumes that checkpoint (``--resume auto`` finds it): the trainer's fingerprint holds
``num_classes``, which the grown meta.json records as C + N.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from partial_fc.centers.new_rows import image_centers, seed_rows
from partial_fc.checkpoint import list_checkpoints, read_meta
from partial_fc.checkpoint.grow import grow_checkpoint
from partial_fc.config import from_dict, load_yaml, to_dict
from partial_fc.config.train import TrainConfig
from partial_fc.config.yaml_io import dump_yaml
from partial_fc.eval.backbone import load_backbone, resolve_checkpoint
from partial_fc.eval.sources import open_source
from partial_fc.util.atomic import write_json_atomic

DEFAULT_INIT_STD = 0.01  # PartialFC's and the config's default


@dataclass(frozen=True)
class Grown:
    checkpoint: Path
    old_classes: int
    num_classes: int
    rows: str  # "seed" or "images"
    notes: tuple[str, ...]


def grow_run(checkpoint: str | Path, out: str | Path, *, add: int, from_images: str | Path | None = None,
             world_size: int | None = None, init_std: float | None = None, batch_size: int = 128,
             device: torch.device | str = "cpu", progress: bool = False) -> Grown:
    run, ckpt = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and out.resolve() == run.resolve():
        raise ValueError(f"--out {out} is the source run; expected a new run directory")
    if existing := list_checkpoints(out):
        raise ValueError(f"{existing[-1][1]} exists; expected a run directory without checkpoints for the grown one")
    meta = read_meta(ckpt)
    if meta["num_classes"] is None:
        raise ValueError(f"checkpoint {ckpt} holds no class weights (its loss has none): there is no head to grow")
    if not (isinstance(add, int) and add >= 1):
        raise ValueError(f"--add must be an integer >= 1, got {add!r}")
    c_old, k = meta["num_classes"], meta["rows_per_class"]
    if world_size is not None and not 1 <= world_size <= c_old + add:
        raise ValueError(f"--world-size must be an integer in [1, {c_old + add}] (every rank owns a class), "
                         f"got {world_size}")
    config_path = run / "config.yaml"
    cfg = load_yaml(config_path, TrainConfig) if config_path.is_file() else None
    notes, classes = [], [{"class": c_old + i, "identity": None, "images": 0} for i in range(add)]
    if from_images is not None:
        source = open_source(from_images)
        identities = len(set(source.labels) - {None})
        if identities != add:  # before the forward passes
            raise ValueError(f"--from-images {from_images} holds {identities} identities; expected "
                             f"--add {add} (one sub-folder or shard label per new class)")
        model, cfg, _ = load_backbone(ckpt, device=device)
        found = image_centers(model, source, image_size=cfg.model.input_size, batch_size=batch_size, device=device,
                              progress=progress)
        if found.centers.shape[1] != meta["embedding_dim"]:
            raise ValueError(f"the backbone of {ckpt} embeds in {found.centers.shape[1]} dimensions, its head has "
                             f"{meta['embedding_dim']}")
        new_rows, how = found.row_source(first_class=c_old, rows_per_class=k), "images"
        classes = [{"class": c_old + i, "identity": identity, "images": n}
                   for i, (identity, n) in enumerate(zip(found.identities, found.counts))]
    else:
        if meta["head_seed"] is None:
            raise ValueError(f"checkpoint file {ckpt / 'meta.json'} records no head_seed; the seed rule needs it "
                             f"(use --from-images)")
        if init_std is None:
            init_std = cfg.head.init_std if cfg is not None else DEFAULT_INIT_STD
            if cfg is None:
                notes.append(f"init_std {init_std} (the default; checkpoints do not record it: pass --init-std "
                             f"if the run used another)")
        new_rows = seed_rows(head_type=meta["head_type"], seed=meta["head_seed"], dim=meta["embedding_dim"],
                             init_std=init_std)
        how = "seed"
    if cfg is not None:
        data: dict[str, Any] = to_dict(cfg)
        data["run_dir"] = str(out)
        data["head"] = {**data["head"], "num_classes": c_old + add}
        dump_yaml(from_dict(TrainConfig, data), out / "config.yaml")
    else:
        notes.append(f"{run} has no config.yaml: {out} gets none (set head.num_classes: {c_old + add} to fine-tune)")
    write_json_atomic(out / "new_classes.json", {"source": str(ckpt), "old_classes": c_old, "num_classes": c_old + add,
                                                 "rows": how, "classes": classes})
    path = grow_checkpoint(ckpt, out, add=add, new_rows=new_rows, world_size=world_size)
    return Grown(checkpoint=path, old_classes=c_old, num_classes=c_old + add, rows=how, notes=tuple(notes))
