"""``meta.json``: what a checkpoint holds, written last, so its presence marks a complete one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from partial_fc.checkpoint.layout import META, is_temporary

FORMAT_VERSION = 1
REQUIRED_KEYS = ("step", "world_size", "num_classes", "embedding_dim", "rows_per_class", "class_ranges", "extra",
                 "files", "rng")


def build_meta(*, step: int, world_size: int, head: torch.nn.Module | None, rows_per_class: int | None,
               class_ranges: list[list[int]], extra: dict[str, Any], rng: bool,
               files: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything a reader checks before loading a tensor. ``head_type`` names the class-weight
    criterion (PartialFC, an agent module...) for the reader's information; loading ignores it."""
    return {
        "format_version": FORMAT_VERSION, "step": int(step), "world_size": world_size,
        "num_classes": head.num_classes if head is not None else None,
        "embedding_dim": head.embedding_dim if head is not None else None, "rows_per_class": rows_per_class,
        "subcenters": rows_per_class if rows_per_class and rows_per_class > 1 else None, "class_ranges": class_ranges,
        "head_seed": getattr(head, "seed", None), "head_type": type(head).__name__ if head is not None else None,
        "extra": extra, "rng": bool(rng), "torch_version": torch.__version__, "saved_unix_s": round(time.time(), 3),
        "files": files,
    }


def read_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a complete checkpoint; ValueError for a missing, temporary or incomplete one."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint directory {path} does not exist")
    if is_temporary(path.name):
        raise ValueError(f"{path} is an unfinished checkpoint (temporary directory); use a step-<N> directory")
    meta_path = path / META
    if not meta_path.is_file():
        raise ValueError(f"checkpoint {path} is incomplete: it has no meta.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint file {meta_path} is corrupt: {e}") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"checkpoint {path} has format_version {version!r}; this code reads {FORMAT_VERSION}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ValueError(f"checkpoint file {meta_path} lacks {missing}")
    return meta
