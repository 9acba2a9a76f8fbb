"""Read a typed config from YAML (plus overrides) and write the resolved one back, atomically."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from partial_fc.config.dicts import from_dict, to_dict
from partial_fc.config.overrides import apply_overrides

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
    """Write `cfg` to `path` atomically (temp file in the same folder, then os.replace), so a
    reader never sees half a file and a crash leaves the previous version. Returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(to_yaml(cfg))
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the run folder is meant to be read by others
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
