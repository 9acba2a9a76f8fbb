#!/usr/bin/env python3
"""Write an sbatch script for `partial-fc train` from arguments and submit it.

    python launch/submit_slurm.py --nodes 4 --gpus-per-node 8 --partition gpu --time 48:00:00 \
        --config configs/glint360k_r100.yaml --set train.epochs=20 --dry-run

--dry-run prints the script and submits nothing. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

TEMPLATE = """#!/usr/bin/env bash
#SBATCH --job-name={job_name}
#SBATCH --nodes={nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node={gpus}
#SBATCH --cpus-per-task={cpus}
#SBATCH --time={time}
#SBATCH --output={output}
{extra_directives}set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
port=${{MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}}

srun --ntasks-per-node=1 --kill-on-bad-exit=1 \\
  torchrun --nnodes {nodes} --nproc_per_node {gpus} \\
  --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$head_node:$port" \\
  --no-python partial-fc train {train_args}
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="training config YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override passed to `partial-fc train --set` (repeatable)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--cpus-per-task", type=int, default=None, help="default: 8 per GPU")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--time", default="24:00:00", help="HH:MM:SS or D-HH:MM:SS")
    p.add_argument("--job-name", default="partial-fc")
    p.add_argument("--output", default="%x-%j.out")
    p.add_argument("--dry-run", action="store_true", help="print the script, submit nothing")
    args = p.parse_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error(f"--nodes and --gpus-per-node must be >= 1, got {args.nodes} and {args.gpus_per_node}")
    if not re.fullmatch(r"(\d+-)?\d{1,2}(:\d{2}){0,2}", args.time):
        p.error(f"--time {args.time!r} is not a SLURM time (HH:MM:SS or D-HH:MM:SS)")
    for item in args.overrides:
        if "=" not in item:
            p.error(f"--set {item!r}: expected KEY=VALUE")
    return args


def render(args: argparse.Namespace) -> str:
    extra = "".join(f"#SBATCH --{name}={value}\n" for name, value in
                    (("partition", args.partition), ("account", args.account)) if value)
    train = ["--config", args.config] + [x for item in args.overrides for x in ("--set", item)]
    return TEMPLATE.format(job_name=args.job_name, nodes=args.nodes, gpus=args.gpus_per_node,
                           cpus=args.cpus_per_task or 8 * args.gpus_per_node, time=args.time,
                           output=args.output, extra_directives=extra, train_args=shlex.join(train))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    script = render(args)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    if not Path(args.config).is_file():
        print(f"config {args.config!r} does not exist", file=sys.stderr)
        return 2
    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix="partial-fc-", delete=False) as f:
        f.write(script)
    print(f"wrote {f.name}", file=sys.stderr)
    return subprocess.run(["sbatch", f.name], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
