"""`partial-fc train --config FILE [--set key=value ...]`: run or resume training.

Single process:  partial-fc train --config configs/demo.yaml
torchrun:        torchrun --nproc_per_node 8 $(which partial-fc) train --config configs/ms1mv3_r50.yaml
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set head.sample_rate=0.2 (repeatable)")
    parser.add_argument("--resume", default="auto",
                        help="'auto' (latest complete checkpoint of the run directory), 'none', or a checkpoint path")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from partial_fc.config import load_yaml
    from partial_fc.config.train import TrainConfig
    from partial_fc.train.trainer import train

    if not Path(args.config).is_file():
        what = "is a directory" if Path(args.config).is_dir() else "does not exist"
        raise ValueError(f"--config {args.config} {what}; give a YAML file (see configs/, e.g. configs/demo.yaml)")
    cfg = load_yaml(args.config, TrainConfig, overrides=args.overrides)
    train(cfg, resume=None if args.resume == "none" else args.resume)
    return 0
