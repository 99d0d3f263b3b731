"""reidlab.lessons.launch: notebook 11's scripts run on real processes, see this checkout, and fail loudly."""
from __future__ import annotations

import json
import os
import shlex

import pytest

import reidlab
from reidlab.lessons import launch


def test_write_script_dedents_and_refuses_paths(tmp_path):
    path = launch.write_script(tmp_path, "hello.py", """
        import sys
        print("hi", sys.argv[1:])
    """)
    assert path == tmp_path / "hello.py"
    assert path.read_text() == 'import sys\nprint("hi", sys.argv[1:])\n'
    for bad in ("sub/hello.py", "hello.txt", "../hello.py"):
        with pytest.raises(ValueError, match="file name ending in .py"):
            launch.write_script(tmp_path, bad, "pass")


def test_command_is_what_a_user_types():
    assert launch.command("/tmp/my script.py", "--out", 3, nproc=4) == (
        "torchrun --standalone --nproc-per-node 4 '/tmp/my script.py' --out 3")
    assert launch.command(None, "--profile", "ci", module="reidlab.ecn") == (
        "torchrun --standalone --nproc-per-node 2 -m reidlab.ecn --profile ci")
    with pytest.raises(ValueError, match="exactly one"):
        launch.command("a.py", module="reidlab.ecn")
    with pytest.raises(ValueError, match="exactly one"):
        launch.command()


def test_torchrun_runs_every_rank_with_this_checkout_and_one_thread(tmp_path, monkeypatch):
    """Two processes, each told its rank; both import *this* reidlab, with one OpenMP thread and a dist timeout."""
    monkeypatch.setenv("PYTHONPATH", "/nonexistent-first-entry")
    script = launch.write_script(tmp_path, "report.py", """
        import json, os, sys
        import reidlab
        from reidlab.distributed import all_gather_cat, init_from_env
        import torch

        with init_from_env("cpu") as info:
            ranks = all_gather_cat(torch.tensor([info.rank])).tolist()   # a real collective over gloo
            out = {"rank": info.rank, "world": info.world_size, "gathered": ranks, "reidlab": reidlab.__file__,
                   "omp": os.environ["OMP_NUM_THREADS"], "timeout": os.environ["REIDLAB_DIST_TIMEOUT"],
                   "args": sys.argv[1:]}
            with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as f:
                json.dump(out, f)
            print("rank", info.rank, "done")
    """)
    run = launch.torchrun(script, tmp_path, "x y", nproc=2, timeout=300)
    assert run.command == f"torchrun --standalone --nproc-per-node 2 {script} {tmp_path} 'x y'"
    assert run.seconds > 0 and "done" in run.stdout
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["rank"] for r in reports] == [0, 1] and {r["world"] for r in reports} == {2}
    assert all(r["gathered"] == [0, 1] for r in reports)
    assert all(os.path.samefile(r["reidlab"], reidlab.__file__) for r in reports)
    assert all(r["omp"] == "1" and r["timeout"] == str(launch.DIST_TIMEOUT) for r in reports)
    assert all(r["args"] == [str(tmp_path), "x y"] for r in reports)


def test_a_failing_process_raises_with_the_command_and_its_output(tmp_path):
    script = launch.write_script(tmp_path, "fail.py", """
        import os
        if os.environ["RANK"] == "1":
            raise SystemExit("rank 1 cannot find its data")
    """)
    with pytest.raises(RuntimeError) as info:
        launch.torchrun(script, nproc=2, timeout=300)
    message = str(info.value)
    assert message.startswith(f"`torchrun --standalone --nproc-per-node 2 {shlex.quote(str(script))}` failed")
    assert "rank 1 cannot find its data" in message


def test_a_module_runs_too(tmp_path):
    run = launch.torchrun(None, "--help", nproc=1, module="reidlab.ecn", timeout=300)
    assert "--sync-bn" in run.stdout and run.command.endswith("-m reidlab.ecn --help")


def test_bad_nproc_is_refused():
    with pytest.raises(ValueError, match="nproc"):
        launch.torchrun("x.py", nproc=0)
