"""Fixtures shared across the test packages: the tiny synthetic data set and a tiny trained run,
each made once per module that asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_run import make_tiny_data, train_tiny_run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_tiny_data(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory) -> Path:
    """Two steps of the tiny config, checkpointed at step 2 (see ``train_tiny_run``)."""
    return train_tiny_run(data_dir, tmp_path_factory.mktemp("runs") / "run")
