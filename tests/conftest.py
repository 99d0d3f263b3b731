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
