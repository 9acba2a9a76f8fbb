"""Sub-center ArcFace (Deng et al., ECCV 2020): K sub-centers per class, a class's cosine is
the max over its sub-centers, then ArcFace on the target; paper defaults K=3, s=64, m=0.5 rad.

The margin only declares ``subcenters``; the head keeps a class's K rows contiguous on the
rank that owns the class, takes the max per class inside each logit tile and routes the
gradient to the arg-max row (the derivative of max).
"""

from __future__ import annotations

from partial_fc.head.margins.arcface import ArcFace


class SubCenterArcFace(ArcFace):
    def __init__(self, *, scale: float = 64.0, margin_rad: float = 0.5, subcenters: int = 3) -> None:
        super().__init__(scale=scale, margin_rad=margin_rad)
        if not (isinstance(subcenters, int) and subcenters >= 1):
            raise ValueError(f"subcenter_arcface subcenters must be an integer >= 1, got {subcenters!r}")
        self.subcenters = subcenters

    def extra_repr(self) -> str:
        return f"scale={self.scale}, margin_rad={self.margin_rad}, subcenters={self.subcenters}"
