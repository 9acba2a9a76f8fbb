"""`partial-fc bench KIND`: benchmarks that print medians and ratios against a floor or a
baseline measured in the same run. Each kind is a module with ``add_arguments``/``run``."""

from __future__ import annotations

import argparse
import importlib

KINDS: dict[str, tuple[str, str]] = {
    "head": ("partial_fc.bench.head", "sharded head step time and memory vs the GEMM floor and a naive baseline"),
    "data": ("partial_fc.bench.data", "JPEG decode + augment throughput per worker and in total"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND")
    sub.required = True
    for name, (module, help_text) in KINDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_bench_module=module)
        try:
            importlib.import_module(module).add_arguments(p)
        except ImportError as err:
            # a kind whose dependencies are missing must not break the other kinds; it says why when chosen
            p.add_argument("_ignored", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            p.set_defaults(_bench_import_error=f"bench {name} is unavailable: {err}")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_bench_import_error", None):
        raise ValueError(args._bench_import_error)
    return int(importlib.import_module(args._bench_module).run(args) or 0)
