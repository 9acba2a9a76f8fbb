"""``partial_fc.margins``: the margin transforms by name (see ``partial_fc.head.margins``)."""

from partial_fc.head.margins import *  # noqa: F401,F403
from partial_fc.head.margins import REGISTRY, Margin, ScaledCosineMargin, build, names  # noqa: F401
