import random

import numpy as np
import pytest
import torch

from reidlab.files import data_dir
from reidlab.lessons import setup
from reidlab.profiles import PROFILES, resolve_profile


def test_default_profile_follows_cuda(no_profile_env):
    assert resolve_profile(cuda_available=True).name == "gpu"
    assert resolve_profile(cuda_available=False).name == "laptop"


def test_env_variable_and_argument(monkeypatch):
    monkeypatch.setenv("REIDLAB_PROFILE", "ci")
    assert resolve_profile().name == "ci"
    assert resolve_profile("gpu").name == "gpu"  # an explicit argument wins
    monkeypatch.setenv("REIDLAB_PROFILE", " Laptop ")
    assert resolve_profile().name == "laptop"


def test_unknown_profile_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("REIDLAB_PROFILE", "cpu")
    with pytest.raises(ValueError, match=r"unknown profile 'cpu' \(from REIDLAB_PROFILE\).*ci, laptop, long, gpu"):
        resolve_profile()


def test_pick_returns_the_profiles_value():
    assert [PROFILES[n].pick(ci=1, laptop=2, gpu=3) for n in ("ci", "laptop", "long", "gpu")] == [1, 2, 2, 3]
    assert PROFILES["long"].pick(ci=1, laptop=2, gpu=3, long=4) == 4  # long only where it is given
    assert PROFILES["laptop"].pick(ci=1, laptop=2, gpu=3, long=4) == 2


def test_profiles_grow_with_scale():
    from reidlab.data.synth import SCALES

    ci, laptop, long, gpu = (PROFILES[n] for n in ("ci", "laptop", "long", "gpu"))
    assert ci.height * ci.width <= laptop.height * laptop.width < gpu.height * gpu.width
    assert ci.epochs < laptop.epochs < gpu.epochs
    assert SCALES[ci.synth_scale].query is None and SCALES[laptop.synth_scale].test_ids > SCALES[ci.synth_scale].test_ids
    assert (gpu.height, gpu.width, gpu.batch_size, gpu.epochs) == (256, 128, 128, 60)  # the paper's settings
    # long is laptop with more seeds (picked by the notebooks), never other sizes
    assert {k: v for k, v in vars(long).items() if k not in ("name", "description")} == \
        {k: v for k, v in vars(laptop).items() if k not in ("name", "description")}
    # the paper's recipe on the GPU, the scaled one on the CPU profiles (reidlab.ecn.config.scaled_recipe)
    assert gpu.ecn_exact and not any(PROFILES[n].ecn_exact for n in ("ci", "laptop", "long"))


def test_setup_seeds_everything_and_reports(capsys, monkeypatch, restore_torch_flags):
    monkeypatch.setenv("REIDLAB_PROFILE", "ci")
    cfg = setup(seed=123)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    out = capsys.readouterr().out
    setup(seed=123, verbose=False)
    second = (random.random(), np.random.rand(), torch.rand(1).item())
    assert first == second
    assert (cfg.name, cfg.seed, cfg.device) == ("ci", 123, "cuda" if torch.cuda.is_available() else "cpu")
    lines = out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["versions", "device", "profile", "seed"]
    assert f"torch {torch.__version__}" in lines[0] and lines[3].endswith("123")
    assert capsys.readouterr().out == ""  # verbose=False prints nothing


def test_setup_fixes_the_cpu_thread_count(monkeypatch, restore_torch_flags):
    if torch.cuda.is_available():
        pytest.skip("the thread count is fixed on the CPU only")
    monkeypatch.setenv("REIDLAB_PROFILE", "ci")
    monkeypatch.delenv("REIDLAB_THREADS", raising=False)
    torch.set_num_threads(1)
    setup(verbose=False)
    assert torch.get_num_threads() == 2  # DEFAULT_THREADS: what the committed outputs used
    monkeypatch.setenv("REIDLAB_THREADS", "1")
    setup(verbose=False)
    assert torch.get_num_threads() == 1
    for bad in ("two", "0"):
        monkeypatch.setenv("REIDLAB_THREADS", bad)
        with pytest.raises(ValueError, match="REIDLAB_THREADS"):
            setup(verbose=False)


def test_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("REIDLAB_DATA_DIR", str(tmp_path / "x"))
    assert data_dir() == tmp_path / "x"
