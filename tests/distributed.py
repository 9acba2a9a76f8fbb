"""Distributed tests run on real gloo ranks in spawned processes (see partial_fc.comm.local)."""

from partial_fc.comm.local import free_port, run_ranks

__all__ = ["free_port", "run_ranks"]
