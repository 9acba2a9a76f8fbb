"""Writing and reading one checkpoint file safely.

Only plain data goes in (tensors, numbers, strings, lists, tuples, dicts), checked before the
write, so every file loads with ``torch.load(weights_only=True)``: no pickled object is ever
executed. Each file's size and SHA-256 go into ``meta.json``; a reader checks the size before any
long work and the hash while reading, and names the file when either is wrong. A write that
runs out of space is one line saying so and where (see ``partial_fc/util/space.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from partial_fc.util.space import out_of_space

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device, torch.Size)
_HASH_BLOCK_BYTES = 16 << 20


def check_plain(obj: Any, where: str) -> None:
    """Raise ValueError naming the first value that ``weights_only`` loading would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise ValueError(f"{where}: key {key!r} is a {type(key).__name__}; checkpoint keys must be str or int")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise ValueError(f"{where} is a {type(obj).__name__}; a checkpoint holds only tensors, numbers, strings, "
                     f"lists and dicts (convert it, e.g. numpy arrays with torch.from_numpy)")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def save_file(obj: Any, path: Path, *, what: str) -> dict[str, Any]:
    """Write ``obj`` to ``path`` durably; returns {"size": bytes, "sha256": hex}."""
    check_plain(obj, what)
    with out_of_space(path, what=what):
        with open(path, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    return {"size": path.stat().st_size, "sha256": sha256_of(path)}


def save_json(data: dict[str, Any], path: Path, *, what: str) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` durably."""
    with out_of_space(path, what=what):
        with open(path, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_present(path: Path, record: dict[str, Any]) -> None:
    """Cheap check (one stat) that the file exists with the size ``meta.json`` recorded."""
    if not path.is_file():
        raise ValueError(f"checkpoint file {path} is missing: the checkpoint is incomplete")
    size = path.stat().st_size
    if size != record["size"]:
        raise ValueError(f"checkpoint file {path} is {size} bytes, meta.json records {record['size']}: "
                         f"the file is truncated or was replaced")


def load_file(path: Path, record: dict[str, Any], *, verify: bool = True, mmap: bool = False) -> Any:
    """Load with ``weights_only=True`` (on CPU; ``mmap``: tensors map the file, read lazily) after
    checking size and hash."""
    check_present(path, record)
    if verify and sha256_of(path) != record["sha256"]:
        raise ValueError(f"checkpoint file {path} is corrupt: its SHA-256 differs from the one in meta.json")
    return safe_load(path, mmap=mmap)


def safe_load(path: Path, *, mmap: bool = False) -> Any:
    """``torch.load(weights_only=True)``; any failure is a ValueError naming the file."""
    # mmap needs torch's zip format; anything else goes to the weights-only unpickler, which refuses objects
    mmap = mmap and zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # UnpicklingError for a refused object, RuntimeError for a broken archive
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e).lower() or "unsupported global" in str(e).lower():
            raise ValueError(f"checkpoint file {path} holds objects other than tensors and plain data; refusing to "
                             f"unpickle it (torch.load weights_only=True): {first}") from e
        raise ValueError(f"checkpoint file {path} cannot be read (corrupt or truncated): {first}") from e
