"""partial-fc: model-parallel partial-FC margin-softmax training for face recognition."""

from partial_fc import margins
from partial_fc.head.partial_fc import PartialFC
from partial_fc.head.ranges import class_range

__all__ = ["PartialFC", "margins", "class_range"]
__version__ = "0.1.0"
