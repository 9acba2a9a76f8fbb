"""`partial-fc data convert --from folder SRC`: one sub-folder per identity, any image format
PIL reads (JPEG kept byte for byte, anything else re-encoded to JPEG).

    SRC/alice/001.jpg, SRC/alice/002.png, SRC/bob/x.jpeg, ...

Labels are the sub-folder names in sorted order, numbered densely from 0; files in nested
folders count for the identity folder they are under.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from PIL import Image

from partial_fc.data.convert.common import ConvertConfig, LoadError, write_shuffled
from partial_fc.data.formats.manifest import ShardManifest


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (with the dot) of every format this PIL can open."""
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def list_folder(src: Path) -> tuple[list[Path], list[int], dict[str, int], Counter[str]]:
    """(files, dense labels, label map, skipped counts) of an identity-per-folder tree."""
    if not src.is_dir():
        raise NotADirectoryError(f"--from folder expects a directory of identity folders, got {src}")
    extensions = image_extensions()
    skipped: Counter[str] = Counter()
    per_class: dict[str, list[Path]] = {}
    for entry in sorted(src.iterdir()):
        if entry.is_file():
            skipped["files_outside_identity_folders"] += 1
            continue
        images = []
        for f in sorted(p for p in entry.rglob("*") if p.is_file()):
            if f.suffix.lower() in extensions:
                images.append(f)
            else:
                skipped["non_image_files"] += 1
        if images:
            per_class[entry.name] = images
        else:
            skipped["folders_without_images"] += 1
    if not per_class:
        raise ValueError(f"{src}: no identity folder holds an image file (extensions PIL reads: e.g. .jpg, .png)")
    label_map = {name: label for label, name in enumerate(sorted(per_class))}
    files = [f for name in sorted(per_class) for f in per_class[name]]
    labels = [label_map[name] for name in sorted(per_class) for _ in per_class[name]]
    return files, labels, label_map, skipped


def convert_folder(src: str | Path, config: ConvertConfig) -> ShardManifest:
    files, labels, label_map, skipped = list_folder(Path(src))

    def load(i: int) -> bytes:
        try:
            return files[i].read_bytes()
        except OSError:
            raise LoadError("unreadable_file") from None

    return write_shuffled(
        config,
        labels=labels,
        load=load,
        label_map=label_map,
        source={"kind": "folder", "path": str(Path(src).resolve())},
        skipped=skipped,
    )
