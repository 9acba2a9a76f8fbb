"""Read a typed config from YAML (plus overrides) and write the resolved one back, atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from partial_fc.config.typed import from_dict, to_dict
from partial_fc.config.overrides import apply_overrides
from partial_fc.util.atomic import write_text_atomic

T = TypeVar("T")


def load_yaml(path: str | os.PathLike[str], cls: type[T], *, overrides: Sequence[str] = ()) -> T:
    """Parse `path` with ``yaml.safe_load``, merge ``--set`` `overrides`, build `cls` strictly.

    An empty file means all defaults. Raises ValueError for invalid YAML, a top level that is
    not a mapping, and every error of `from_dict` and `apply_overrides`.
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} must hold a mapping of config keys at the top level, "
            f"got {type(data).__name__}"
        )
    return from_dict(cls, apply_overrides(data, overrides, cls))


def to_yaml(cfg: Any) -> str:
    """The YAML text of dataclass `cfg`, keys in field order."""
    return yaml.safe_dump(
        to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True
    )


def dump_yaml(cfg: Any, path: str | os.PathLike[str]) -> Path:
    """Write `cfg` to `path` atomically (util.atomic), so a
    reader never sees half a file and a crash leaves the previous version. Returns the path."""
    return write_text_atomic(path, to_yaml(cfg))
