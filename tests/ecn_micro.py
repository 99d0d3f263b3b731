"""The micro ECN setting shared by the trainer's tests: two tiny synthetic worlds and the smallest
sizes that still run the whole pipeline (3 steps of 8 + 8 images per epoch, 3 epochs)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reidlab.data.datasets import load_reid_dataset
from reidlab.data.synth import Scale, make_synthetic_reid

ROOT = Path(__file__).resolve().parents[1]
MICRO = Scale(train_ids=6, train_images=24, test_ids=4, query=None, gallery_real=12, distractors=2, junk=2)
#: ``pretrained=None``: the trainer's tests start from random weights (the synthetic pretraining
#: of reidlab.ecn.pretrain has its own tests, and would otherwise run once per temporary data dir).
#: ``ecn_exact=True``: ECN's published learning rates and alpha, so the tests of the trainer's
#: mechanics read ECN's numbers (the CPU profiles' scaled recipe has tests of its own).
SMALL = dict(epochs=3, batch_size=8, height=32, width=16, num_features=32, knn=2, knn_start=1, eval_source=False,
             pretrained=None, ecn_exact=True)
CLI_SMALL = [
    "--profile", "ci", "--epochs", "3", "--batch-size", "8", "--height", "32", "--width", "16", "--num-features", "32",
    "--knn", "2", "--knn-start", "1", "--no-eval-source", "--quiet", "--pretrained", "none", "--ecn-exact",
]


def make_worlds(root: Path) -> dict[str, str]:
    """A micro source world (no CamStyle images) and a micro target world (with them), 64x32."""
    src = make_synthetic_reid(root, "synth_market", MICRO, seed=0, image_size=(64, 32), write_camstyle=False, workers=1)
    tgt = make_synthetic_reid(root, "synth_duke", MICRO, seed=0, image_size=(64, 32), workers=1)
    return {"source": str(src), "target": str(tgt)}


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m reidlab.ecn ARGS`` in a fresh interpreter (one OpenMP thread, this checkout first on the path)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "reidlab.ecn", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=timeout)


# Module-scoped fixtures for the trainer's test files (import them by name: `from ecn_micro import worlds, domains`)
@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    return make_worlds(tmp_path_factory.mktemp("worlds"))


@pytest.fixture(scope="module")
def domains(worlds):
    return load_reid_dataset(worlds["source"]), load_reid_dataset(worlds["target"])
