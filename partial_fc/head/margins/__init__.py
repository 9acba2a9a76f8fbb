"""Margin transforms of the target logit, selectable by name.

>>> from partial_fc import margins
>>> margins.build("arcface", scale=64.0, margin_rad=0.5)
"""

from __future__ import annotations

import difflib
from typing import Any

from partial_fc.head.margins.adaface import AdaFace
from partial_fc.head.margins.arcface import ArcFace
from partial_fc.head.margins.base import Margin, ScaledCosineMargin
from partial_fc.head.margins.combined import Combined
from partial_fc.head.margins.cosface import CosFace
from partial_fc.head.margins.curricularface import CurricularFace
from partial_fc.head.margins.l2softmax import L2Softmax
from partial_fc.head.margins.lsoftmax import LSoftmax
from partial_fc.head.margins.magface import MagFace
from partial_fc.head.margins.normface import NormFace
from partial_fc.head.margins.softmax import Softmax
from partial_fc.head.margins.sphereface import SphereFace
from partial_fc.head.margins.subcenter import SubCenterArcFace

REGISTRY: dict[str, type[Margin]] = {
    "softmax": Softmax,
    "lsoftmax": LSoftmax,
    "sphereface": SphereFace,
    "l2softmax": L2Softmax,
    "normface": NormFace,
    "cosface": CosFace,
    "arcface": ArcFace,
    "combined": Combined,
    "subcenter_arcface": SubCenterArcFace,
    "adaface": AdaFace,
    "curricularface": CurricularFace,
    "magface": MagFace,
}


def names() -> list[str]:
    return sorted(REGISTRY)


def build(name: str, **params: Any) -> Margin:
    """Instantiate a margin by name; unknown names and parameters are errors that list the valid ones."""
    if name not in REGISTRY:
        # closest names first, so a typo's fix leads the list
        choices = sorted(names(), key=lambda n: -difflib.SequenceMatcher(None, str(name), n).ratio())
        raise ValueError(f"unknown margin {name!r}; choose from {choices}")
    cls = REGISTRY[name]
    try:
        return cls(**params)
    except TypeError as err:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(params) - set(valid))
        what = f"unknown parameters {unknown}" if unknown else f"bad parameters {sorted(params)} ({err})"
        raise ValueError(f"{what} for margin {name!r}; valid: {valid}") from None


__all__ = ["Margin", "ScaledCosineMargin", "build", "names", "REGISTRY"] + [c.__name__ for c in REGISTRY.values()]
