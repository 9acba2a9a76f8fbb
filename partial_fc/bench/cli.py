"""`partial-fc bench KIND`: benchmarks that print medians and ratios against a floor or a
baseline measured in the same run. Each kind is a module with ``add_arguments``/``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

KINDS: dict[str, tuple[str, str]] = {
    "head": ("partial_fc.bench.head", "sharded head step time and memory vs the GEMM floor and a naive baseline"),
    "data": ("partial_fc.bench.data", "JPEG decode + augment throughput per worker and in total"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND")
    sub.required = True
    argv = sys.argv[1:]
    chosen = next((a for a in argv[argv.index("bench") + 1 :] if not a.startswith("-")), None) if "bench" in argv else None
    for name, (module, help_text) in KINDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_bench_module=module)
        if chosen in (None, name) or chosen not in KINDS:
            importlib.import_module(module).add_arguments(p)


def run(args: argparse.Namespace) -> int:
    return int(importlib.import_module(args._bench_module).run(args) or 0)
