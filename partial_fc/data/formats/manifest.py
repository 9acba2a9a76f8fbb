"""The JSON manifest beside a set of training shards (``manifest.json``).

It is written last, atomically, so a directory with a manifest is a finished data set. The
loader and the trainer read the class count and the shard list from it; the label map says
which original label (folder name, RecordIO label) each dense label came from.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from partial_fc.util.atomic import write_atomic
from partial_fc.data.formats.shards import ShardInfo

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "partial-fc-shards"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class ShardManifest:
    """num_classes dense labels 0..num_classes-1; shards in write order; ``skipped`` counts
    inputs left out and why; ``extra`` holds what a producer wants to record (generator
    parameters, verification pairs written alongside, ...)."""

    num_classes: int
    num_samples: int
    shards: tuple[ShardInfo, ...]
    label_map: dict[str, int]
    source: dict[str, Any]
    skipped: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"manifest num_classes must be >= 1, got {self.num_classes}")
        counted = sum(s.num_samples for s in self.shards)
        if counted != self.num_samples:
            raise ValueError(f"manifest num_samples is {self.num_samples} but its shards hold {counted}")
        if self.label_map and len(self.label_map) != self.num_classes:
            raise ValueError(f"manifest label_map has {len(self.label_map)} entries, expected num_classes={self.num_classes}")

    def shard_paths(self, root: str | Path) -> list[str]:
        return [str(Path(root) / s.name) for s in self.shards]

    def to_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["shards"] = [asdict(s) for s in self.shards]
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, **body}

    @classmethod
    def from_json(cls, data: dict[str, Any], *, where: str = "manifest") -> ShardManifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{where}: format is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        if data.get("version") != MANIFEST_VERSION:
            raise ValueError(f"{where}: version {data.get('version')!r} is not supported, expected {MANIFEST_VERSION}")
        known = {"format", "version", "num_classes", "num_samples", "shards", "label_map", "source", "skipped", "extra"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
        return cls(
            num_classes=int(data["num_classes"]),
            num_samples=int(data["num_samples"]),
            shards=tuple(ShardInfo(**s) for s in data["shards"]),
            label_map={str(k): int(v) for k, v in data.get("label_map", {}).items()},
            source=dict(data.get("source", {})),
            skipped={str(k): int(v) for k, v in data.get("skipped", {}).items()},
            extra=dict(data.get("extra", {})),
        )


def write_manifest(out_dir: str | Path, manifest: ShardManifest) -> Path:
    path = Path(out_dir) / MANIFEST_NAME
    text = json.dumps(manifest.to_json(), indent=1, sort_keys=False) + "\n"
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    return path


def load_manifest(path: str | Path) -> ShardManifest:
    """Read ``DIR/manifest.json`` (``path`` may be the directory or the file)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no manifest at {path}: an unfinished or foreign shard directory (expected {MANIFEST_NAME})")
    with open(path, encoding="utf-8") as f:
        return ShardManifest.from_json(json.load(f), where=str(path))
