"""Images to embed, streamed in a fixed order with a key and (when known) a label.

* a **folder of identity folders** (``ROOT/<identity>/<image>``, nested folders allowed): key is
  the path relative to ROOT, label the identity folder name; identities and files sorted by name;
* a **flat folder** of images: key is the file name, no label;
* **shards**: a directory with ``manifest.json`` (``partial-fc data synth/convert``) or one
  ``.tar`` file; key is ``<shard name>/<sample key>``, label the integer in the ``.cls`` member.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from partial_fc.data.convert.folder import image_extensions
from partial_fc.data.formats.images import decode_rgb
from partial_fc.data.formats.manifest import MANIFEST_NAME, load_manifest


@dataclass(frozen=True)
class ImageSource:
    """``keys`` and ``labels`` (None when unknown) of every image, in iteration order."""

    path: Path
    kind: str  # "identity-folders", "flat-folder" or "shards"
    keys: tuple[str, ...]
    labels: tuple[str | int | None, ...]
    _files: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)

    def images(self) -> Iterator[np.ndarray]:
        """(H, W, 3) uint8 RGB images in the order of ``keys``."""
        if self.kind == "shards":
            for _, data, _ in _iter_shard_members(self._files):
                yield decode_rgb(data)
        else:
            for f in self._files:
                yield decode_rgb(f.read_bytes())


def _iter_shard_members(shards: tuple[Path, ...]) -> Iterator[tuple[str, bytes, int]]:
    """(shard/key, jpg bytes, label) of every sample with a jpg and a cls member, in tar order."""
    for shard in shards:
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard, "r:") as tar:
            for member in tar:
                if not member.isfile() or "." not in member.name:
                    continue
                key, ext = member.name.split(".", 1)
                fields = pending.setdefault(key, {})
                fields[ext] = tar.extractfile(member).read()
                if "jpg" in fields and "cls" in fields:
                    del pending[key]
                    try:
                        label = int(fields["cls"])
                    except ValueError:
                        raise ValueError(f"{shard}: sample {key!r} has a non-integer label {fields['cls'][:20]!r}") from None
                    yield f"{shard.name}/{key}", fields["jpg"], label
        if pending:
            key = next(iter(pending))
            raise ValueError(f"{shard}: sample {key!r} lacks a jpg or a cls member")


def _shard_source(path: Path, shards: tuple[Path, ...]) -> ImageSource:
    missing = [str(s) for s in shards if not s.is_file()]
    if missing:
        raise ValueError(f"{path}: shard(s) listed in the manifest are missing: {missing[:3]}")
    keys, labels = [], []
    for key, _, label in _iter_shard_members(shards):  # one pass for the index (tar reads are cheap)
        keys.append(key)
        labels.append(label)
    return ImageSource(path, "shards", tuple(keys), tuple(labels), shards)


def open_source(path: str | Path) -> ImageSource:
    """The images under ``path`` (see the module docstring); ValueError if there are none."""
    path = Path(path)
    if path.is_file() and path.suffix == ".tar":
        return _shard_source(path, (path,))
    if not path.is_dir():
        raise ValueError(f"--input {path} is neither a directory (image folder or shard set) nor a .tar shard")
    if (path / MANIFEST_NAME).is_file():
        manifest = load_manifest(path / MANIFEST_NAME)
        return _shard_source(path, tuple(Path(p) for p in manifest.shard_paths(path)))
    extensions = image_extensions()
    flat = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in extensions)
    folders = sorted(d for d in path.iterdir() if d.is_dir())
    if flat and folders:
        raise ValueError(f"{path} holds both image files and sub-folders; use either a flat folder of images "
                         f"or one sub-folder per identity")
    if flat:
        return ImageSource(path, "flat-folder", tuple(f.name for f in flat), (None,) * len(flat), tuple(flat))
    files, labels = [], []
    for d in folders:
        for f in sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in extensions):
            files.append(f)
            labels.append(d.name)
    if not files:
        raise ValueError(f"{path}: no images found (expected image files, identity sub-folders of images, "
                         f"or a shard set with {MANIFEST_NAME})")
    keys = tuple(str(f.relative_to(path)) for f in files)
    return ImageSource(path, "identity-folders", keys, tuple(labels), tuple(files))
