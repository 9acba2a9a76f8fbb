#!/usr/bin/env python3
"""Submit `partial-fc train` to SLURM from arguments: launch/slurm.sbatch with sbatch options.

    python launch/submit_slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 48:00:00 \\
        --config configs/glint360k_r100.yaml --set train.epochs=20 --dry-run
    python launch/submit_slurm.py --gpus-per-node 0 --nproc-per-node 2 --cpus-per-task 2 \\
        --config configs/demo.yaml                      # CPU-only cluster

Nothing is written to disk: the options go on sbatch's command line and the job script is
launch/slurm.sbatch itself (requeue on preemption, signal forwarding, --resume auto), so the
two ways of submitting cannot drift apart. --dry-run prints the command and submits nothing.
Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

SBATCH_SCRIPT = Path(__file__).resolve().with_name("slurm.sbatch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to `partial-fc train --set` (repeatable)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="0: a CPU-only job")
    p.add_argument("--nproc-per-node", type=int, default=None,
                   help="training processes per node (default: --gpus-per-node, or 1 without GPUs)")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPUs per node, split between its processes (default: 8 per process)")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--time", default="24:00:00", help="HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--signal-before-s", type=int, default=300,
                   help="seconds before the time limit at which the job is told to save and requeue")
    p.add_argument("--job-name", default="partial-fc")
    p.add_argument("--output", default="%x-%j.out")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch command, submit nothing")
    args = p.parse_args(argv)
    if args.nodes < 1:
        p.error(f"--nodes must be >= 1, got {args.nodes}")
    if args.gpus_per_node < 0:
        p.error(f"--gpus-per-node must be >= 0 (0: CPU only), got {args.gpus_per_node}")
    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        p.error(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        p.error(f"--cpus-per-task must be >= 1, got {args.cpus_per_task}")
    if args.signal_before_s < 0:
        p.error(f"--signal-before-s must be >= 0, got {args.signal_before_s}")
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", args.time):
        p.error(f"--time {args.time!r} is not a SLURM time (HH:MM:SS or D-HH:MM:SS)")
    for item in args.overrides:
        if "=" not in item:
            p.error(f"--set {item!r}: expected KEY=VALUE")
    return args


def nproc_per_node(args: argparse.Namespace) -> int:
    return args.nproc_per_node or args.gpus_per_node or 1


def command(args: argparse.Namespace) -> list[str]:
    """The sbatch command line (options override the #SBATCH defaults of slurm.sbatch)."""
    nproc = nproc_per_node(args)
    cmd = ["sbatch", f"--job-name={args.job_name}", f"--nodes={args.nodes}", "--ntasks-per-node=1",
           f"--cpus-per-task={args.cpus_per_task or 8 * nproc}", f"--time={args.time}",
           f"--output={args.output}", f"--signal=B:USR1@{args.signal_before_s}",
           f"--export=ALL,NPROC_PER_NODE={nproc}"]
    if args.gpus_per_node:
        cmd.append(f"--gpus-per-node={args.gpus_per_node}")
    cmd += [f"--{name}={value}" for name, value in (("partition", args.partition), ("account", args.account)) if value]
    train = [args.config] + [x for item in args.overrides for x in ("--set", item)]
    return cmd + [str(SBATCH_SCRIPT)] + train


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cmd = command(args)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    if not Path(args.config).is_file():
        print(f"config {args.config!r} does not exist", file=sys.stderr)
        return 2
    if shutil.which("sbatch") is None:
        print("sbatch is not on PATH: run this on a SLURM login node", file=sys.stderr)
        return 2
    if shutil.which("partial-fc") is None:
        print(f"partial-fc is not on PATH ({os.environ.get('PATH', '')}); activate its environment first "
              "(source .venv/bin/activate): the job inherits this PATH", file=sys.stderr)
        return 2
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
