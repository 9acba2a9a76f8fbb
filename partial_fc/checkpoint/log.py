"""Checkpoint messages: one line from rank 0, through the run's logger when there is one."""

from __future__ import annotations

import logging
from typing import Any

from partial_fc.comm import Collectives

_log = logging.getLogger("partial_fc.checkpoint")


def info(logger: Any, comm: Collectives, line: str) -> None:
    if comm.rank == 0:
        (logger.info if logger is not None else _log.info)(line)
