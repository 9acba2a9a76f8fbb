"""Files that appear complete or not at all: write to a temporary name in the same folder,
fsync, then os.replace. The one implementation for every writer in the project (manifests,
configs, summaries, plots, exported models, embeddings); a crash leaves the previous version.

    write_atomic(path, lambda f: f.write(data))          # a writer of a binary file object
    write_text_atomic(path, text); write_json_atomic(path, obj)
    with atomic_path(path) as tmp:                       # a writer that needs a path (ONNX, TorchScript)
        torch.onnx.export(model, args, str(tmp))
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from partial_fc.util.space import out_of_space

FILE_MODE = 0o644  # run folders are meant to be read by others


@contextmanager
def atomic_path(path: str | Path, *, describe: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; after the block it is fsynced and renamed to
    ``path``; on any error it is removed and ``path`` is untouched. A full disk (or quota, or
    file size limit) is a ValueError naming ``path`` (or ``describe``) and the free space."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two processes writing the same file must not share one temporary
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        with out_of_space(tmp, describe=describe or str(path)):
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """JSON with non-JSON numbers (numpy/torch scalars) written as floats."""
    return write_text_atomic(path, json.dumps(data, indent=indent, default=float) + "\n")
