"""Shared test fixtures. Tests never write into the tracked tree: generated data goes to tmp_path."""
from __future__ import annotations

import os

import matplotlib
import pytest

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    """Point reidlab's data/cache folder and figure export at a temporary folder."""
    monkeypatch.setenv("REIDLAB_DATA_DIR", str(tmp_path / "reidlab-data"))
    monkeypatch.delenv("REIDLAB_FIGURES_DIR", raising=False)
    yield


@pytest.fixture
def no_profile_env(monkeypatch):
    monkeypatch.delenv("REIDLAB_PROFILE", raising=False)
    return os.environ


@pytest.fixture
def restore_torch_flags():
    """Put back the global torch flags that ``reidlab.lessons.setup()`` sets (for tests that call it)."""
    import torch

    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.get_num_threads(),
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[2:5]
    torch.set_num_threads(saved[5])
