"""The benchmark scripts still run (tiny sizes; the timings themselves are not asserted)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("repeat", ["0", "0.25"])
def test_bench_memory_runs_and_finds_the_updates_identical(capsys, repeat):
    bench = _load("bench_memory")
    args = ["--num-samples", "300", "--num-features", "32", "--batch", "16", "--steps", "3", "--repeat-frac", repeat]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "max |difference| of the memories: 0.00e+00" in out and "speed-up:" in out


def test_bench_ecn_step_runs_all_three_configurations(capsys):
    bench = _load("bench_ecn_step")
    import reidlab.memory as memory_module

    original = memory_module.memory_update_
    with bench.loop_update():
        assert memory_module.memory_update_ is bench.published_update
    assert memory_module.memory_update_ is original
    args = ["--device", "cpu", "--arch", "resnet18", "--height", "32", "--width", "16", "--batch", "4",
            "--num-target", "20", "--steps", "1", "--warmup", "1"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    for label in ("paper code", "ours", "plain backbone", "speed-up ours / paper", "ECN overhead"):
        assert label in out


def test_bench_ddp_runs_one_and_two_processes(capsys):
    bench = _load("bench_ddp")
    args = ["--procs", "1", "2", "--arch", "resnet18", "--height", "32", "--width", "16", "--batch", "4",
            "--num-target", "20", "--num-features", "16", "--steps", "1", "--warmup", "1"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "1 process: " in out and "2 processes: " in out and "memory all-gather" in out


def test_bench_parallel_runs_compares_and_finds_the_bits_equal(capsys, tmp_path):
    from ecn_micro import make_worlds
    from reidlab.lessons.parallel import can_fork

    worlds = make_worlds(tmp_path)
    bench = _load("bench_parallel_runs")
    args = ["--jobs", "2", "--procs", "2", "--threads", "1", "--epochs", "1", "--height", "32", "--width", "16",
            "--batch", "8", "--num-features", "32", "--source", worlds["source"], "--target", worlds["target"],
            "--invariance", "E"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    if can_fork():
        assert "speed-up:" in out and "same metrics and weights in a child process as here: True" in out
