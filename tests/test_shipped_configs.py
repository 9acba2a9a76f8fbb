"""Every YAML file under configs/ is a valid training config (a typo there would surface only
when a user starts a long run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from partial_fc.config import load_yaml
from partial_fc.config.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_the_shipped_configs_are_found():
    names = {p.relative_to(p.parents[1]).as_posix() if p.parent.name != "configs" else p.name for p in CONFIGS}
    assert {"demo.yaml", "margins/adaface.yaml", "losses/triplet.yaml", "losses/c_contrastive.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(p.parents[1] if p.parent.name != "configs" else p.parent).as_posix())
def test_shipped_config_loads_and_says_what_its_name_says(path):
    cfg = load_yaml(path, TrainConfig)
    if path.parent.name == "losses":
        assert cfg.loss.name == path.stem
    if path.parent.name == "margins":
        assert cfg.loss.name == "partial_fc" and cfg.head.margin == path.stem
