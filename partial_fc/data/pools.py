"""The multiprocessing context for the data tools' worker pools (synth, convert)."""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext


def pool_context() -> BaseContext:
    """fork where the platform has it, else spawn.

    The workers run numpy, PIL and simplejpeg only, never torch, so fork's usual hazard (a
    child using an OpenMP pool its parent started) does not apply; and a spawned child would
    re-import the package, whose __init__ imports torch, costing seconds and ~300 MB each.
    """
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
