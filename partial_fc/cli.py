"""The `partial-fc` command line.

Each top-level command lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so a broken
optional dependency of one command never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("partial_fc.data.cli", "generate synthetic identities, convert folders and RecordIO to shards"),
    "train": ("partial_fc.train.cli", "train a backbone with the sharded partial-FC head (torchrun or single process)"),
    "bench": ("partial_fc.bench.cli", "benchmarks: head step time and memory, data loading throughput"),
    "plan": ("partial_fc.plan.cli", "capacity planner: per-rank memory of the head, whether it fits, the largest C"),
    "centers": ("partial_fc.centers.cli", "class centers of a checkpoint: export as one matrix, grow by new classes"),
    "eval": ("partial_fc.eval.cli", "verification, identification and IJB-B/C numbers of a trained backbone"),
    "embed": ("partial_fc.embed.cli", "embeddings of an image folder or shard set (embeddings.npy + index.jsonl)"),
    "export": ("partial_fc.export.cli", "export the backbone to ONNX or TorchScript, checked for parity"),
    "viz": ("partial_fc.viz.cli", "figures: training curves, margin geometry on the circle and sphere"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (all of them when None)."""
    parser = argparse.ArgumentParser(prog="partial-fc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text)
        sub_parser.set_defaults(_module=module)
        if command in (None, name):
            importlib.import_module(module).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else "").parse_args(argv)
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except ValueError as err:
        # Bad input (config, data, checkpoint, arguments) is one clear line, not a traceback;
        # PARTIAL_FC_DEBUG=1 shows the traceback.
        if os.environ.get("PARTIAL_FC_DEBUG"):
            raise
        print(f"partial-fc {args.command}: error: {err}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``partial-fc`` console script and ``python -m partial_fc.cli``: ``main()``, then the end
    of the process.

    A rank of a torch.distributed job (its process group destroyed by now, its output and files
    written and closed) ends with ``os._exit`` once stdout and stderr are flushed, skipping the
    interpreter's teardown. There, objects that still hold a C++ process group (a DDP reducer,
    a collectives handle) are destroyed while gloo's threads may still be alive, and about one
    run in some hundreds aborted a rank after a complete run ("terminate called without an
    active exception", SIGABRT, torch 2.13 on gloo): torchrun and SLURM then report a finished
    job as failed, and a preempted one (exit code 75) as crashed instead of asking for a resume.
    """
    try:
        code = main()
    except SystemExit as stop:  # a preempted run's 75, argparse's 2
        if not isinstance(stop.code, int):
            raise
        code = stop.code
    group = sys.modules.get("partial_fc.comm.process_group")  # imported only by commands that use torch
    if group is not None and group.was_distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
