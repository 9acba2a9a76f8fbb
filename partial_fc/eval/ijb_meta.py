"""Readers for the IJB-B / IJB-C 1:1 verification meta files (as distributed with InsightFace).

  {ijbb,ijbc}_face_tid_mid.txt        "<image name> <template id> <media id>"
  {ijbb,ijbc}_template_pair_label.txt "<template id 1> <template id 2> <label 1=same, 0=different>"
  {ijbb,ijbc}_name_5pts_score.txt     "<image name> <x1 y1 ... x5 y5> <detector score>"

Fields are separated by whitespace; blank lines are skipped. Any other deviation is an error that
names the file and the 1-based line number. Row i of the face and landmark files is image i: the
embeddings passed to the protocol must follow that order.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

IJBDataset = Literal["IJBB", "IJBC"]


@dataclass(frozen=True)
class ImageTemplateMedia:
    image_names: tuple[str, ...]
    templates: np.ndarray  # (n_images,) int64
    medias: np.ndarray  # (n_images,) int64


@dataclass(frozen=True)
class TemplatePairs:
    template1: np.ndarray  # (n_pairs,) int64
    template2: np.ndarray  # (n_pairs,) int64
    labels: np.ndarray  # (n_pairs,) bool, True = same subject


@dataclass(frozen=True)
class FaceLandmarks:
    image_names: tuple[str, ...]
    landmarks: np.ndarray  # (n_images, 5, 2) float64, pixel coordinates in the loose crop
    detector_scores: np.ndarray  # (n_images,) float64


@dataclass(frozen=True)
class IJBMeta:
    dataset: str
    images: ImageTemplateMedia
    pairs: TemplatePairs
    faces: FaceLandmarks


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of the non-blank lines; an empty file is an error."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"IJB meta file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    rows = [(i, line.split()) for i, line in enumerate(text.splitlines(), start=1)]
    rows = [(i, fields) for i, fields in rows if fields]
    if not rows:
        raise ValueError(f"{path}: no data lines")
    return rows


def _fields(path: Path, lineno: int, fields: list[str], n: int, layout: str) -> list[str]:
    if len(fields) != n:
        raise ValueError(
            f"{path}:{lineno}: expected {n} fields ({layout}), got {len(fields)}: "
            f"{' '.join(fields)!r}"
        )
    return fields


def _int(path: Path, lineno: int, what: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be an integer, got {text!r}") from None


def _float(path: Path, lineno: int, what: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{path}:{lineno}: {what} must be a number, got {text!r}") from None
    if not np.isfinite(value):
        raise ValueError(f"{path}:{lineno}: {what} must be finite, got {text!r}")
    return value


def read_face_tid_mid(path: str | Path) -> ImageTemplateMedia:
    path = Path(path)
    names, templates, medias = [], [], []
    for lineno, fields in _lines(path):
        name, t, m = _fields(path, lineno, fields, 3, "image template media")
        names.append(name)
        templates.append(_int(path, lineno, "template id", t))
        medias.append(_int(path, lineno, "media id", m))
    return ImageTemplateMedia(tuple(names), np.array(templates, np.int64), np.array(medias, np.int64))


def _read_pairs_slow(path: Path) -> TemplatePairs:
    t1, t2, labels = [], [], []
    for lineno, fields in _lines(path):
        a, b, c = _fields(path, lineno, fields, 3, "template1 template2 label")
        t1.append(_int(path, lineno, "template id 1", a))
        t2.append(_int(path, lineno, "template id 2", b))
        label = _int(path, lineno, "label", c)
        if label not in (0, 1):
            raise ValueError(f"{path}:{lineno}: label must be 0 or 1, got {label}")
        labels.append(label == 1)
    return TemplatePairs(np.array(t1, np.int64), np.array(t2, np.int64), np.array(labels, bool))


def read_template_pair_label(path: str | Path) -> TemplatePairs:
    """IJB-C has ~15.7 M pairs: numpy's C parser reads a well-formed file; anything it rejects is
    re-read line by line, which finds and names the bad line."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "no data": the slow path says it better
            arr = np.loadtxt(path, dtype=np.int64, comments=None, ndmin=2)
    except FileNotFoundError:
        raise FileNotFoundError(f"IJB meta file not found: {path}") from None
    except ValueError:
        return _read_pairs_slow(path)
    if arr.shape[1] != 3 or arr.shape[0] == 0 or not np.isin(arr[:, 2], (0, 1)).all():
        return _read_pairs_slow(path)
    return TemplatePairs(arr[:, 0].copy(), arr[:, 1].copy(), arr[:, 2] == 1)


def read_name_5pts_score(path: str | Path) -> FaceLandmarks:
    path = Path(path)
    names, points, scores = [], [], []
    for lineno, fields in _lines(path):
        fields = _fields(path, lineno, fields, 12, "image x1 y1 ... x5 y5 score")
        names.append(fields[0])
        points.append([_float(path, lineno, f"landmark {k}", v) for k, v in enumerate(fields[1:11])])
        scores.append(_float(path, lineno, "detector score", fields[11]))
    return FaceLandmarks(
        tuple(names), np.array(points, np.float64).reshape(-1, 5, 2), np.array(scores, np.float64)
    )


def load_ijb_meta(meta_dir: str | Path, *, dataset: IJBDataset) -> IJBMeta:
    """Read the three meta files of `dataset` from `meta_dir` and check that they agree."""
    if dataset not in ("IJBB", "IJBC"):
        raise ValueError(f"dataset must be one of ['IJBB', 'IJBC'], got {dataset!r}")
    meta_dir = Path(meta_dir)
    prefix = dataset.lower()
    face_path = meta_dir / f"{prefix}_face_tid_mid.txt"
    lmk_path = meta_dir / f"{prefix}_name_5pts_score.txt"
    images = read_face_tid_mid(face_path)
    pairs = read_template_pair_label(meta_dir / f"{prefix}_template_pair_label.txt")
    faces = read_name_5pts_score(lmk_path)
    if len(faces.image_names) != len(images.image_names):
        raise ValueError(
            f"{lmk_path} lists {len(faces.image_names)} images but {face_path} lists "
            f"{len(images.image_names)}; they must describe the same images in the same order"
        )
    for i, (a, b) in enumerate(zip(images.image_names, faces.image_names)):
        if a != b:
            raise ValueError(
                f"image {i} (0-based) is {a!r} in {face_path} but {b!r} in {lmk_path}; "
                f"the files must list the same images in the same order"
            )
    known = np.unique(images.templates)
    for column in (pairs.template1, pairs.template2):
        missing = column[~np.isin(column, known)]
        if missing.size:
            raise ValueError(
                f"template pair file refers to template {missing[0]}, which has no image in "
                f"{face_path}"
            )
    return IJBMeta(dataset=dataset, images=images, pairs=pairs, faces=faces)
