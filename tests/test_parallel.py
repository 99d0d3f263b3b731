"""reidlab.lessons.parallel: runs side by side in forked processes give what one process gives."""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing  # noqa: F401 - registers torch's fd-sharing tensor pickling, as a DataLoader does
from torch import nn

from reidlab.lessons.parallel import can_fork, map_in_processes, torch_threads

needs_fork = pytest.mark.skipif(not can_fork(), reason="map_in_processes forks only on Linux without CUDA")


def _train(seed: int) -> dict:
    """A few SGD steps of a small conv net with BN: what an ablation run does, in miniature."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3), nn.BatchNorm2d(32),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        x, y = torch.randn(16, 3, 24, 12), torch.randint(0, 5, (16,))
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"state": net.state_dict(), "threads": torch.get_num_threads(), "pid": os.getpid()}


@needs_fork
def test_children_give_the_bits_of_a_serial_run_with_the_same_thread_count():
    side_by_side = map_in_processes(_train, [0, 1, 2], processes=2, threads=1, progress=False)
    one_by_one = map_in_processes(_train, [0, 1, 2], processes=1, threads=1, progress=False)
    assert [r["threads"] for r in side_by_side + one_by_one] == [1] * 6
    assert all(r["pid"] != os.getpid() for r in side_by_side)  # really in children
    assert all(r["pid"] == os.getpid() for r in one_by_one)
    for a, b in zip(side_by_side, one_by_one):
        assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert not torch.equal(side_by_side[0]["state"]["8.weight"], side_by_side[1]["state"]["8.weight"])  # in order


@needs_fork
def test_a_closure_works_and_the_results_keep_the_order_of_the_items():
    offset = 100  # a closure over a local: fork inherits it, nothing is pickled on the way in

    def slow_first(i):
        if i == 0:
            import time
            time.sleep(0.5)  # finishes last
        return i + offset

    assert map_in_processes(slow_first, range(5), processes=3, progress=False) == [100, 101, 102, 103, 104]


@needs_fork
def test_what_a_child_prints_is_printed_here_in_the_order_of_the_items(capsys):
    def talk(i):
        print(f"run {i} says hello")
        return i

    map_in_processes(talk, [2, 0, 1], processes=2, progress=False)
    assert capsys.readouterr().out.splitlines() == ["run 2 says hello", "run 0 says hello", "run 1 says hello"]


@needs_fork
def test_a_failing_child_is_named_with_its_traceback():
    def fail_on_three(i):
        if i == 3:
            raise ValueError("no data for item three")
        return i

    with pytest.raises(RuntimeError, match=r"item 3 \(3\) failed in its process") as err:
        map_in_processes(fail_on_three, range(6), processes=2, progress=False)
    assert "ValueError: no data for item three" in str(err.value) and "fail_on_three" in str(err.value)


@needs_fork
def test_a_result_that_cannot_be_pickled_is_reported_as_an_error():
    with pytest.raises(RuntimeError, match=r"item 1 \(1\) failed in its process") as err:
        map_in_processes(lambda i: (lambda: i) if i == 1 else i, [0, 1], processes=2, progress=False)
    assert "pickle" in str(err.value).lower()


@needs_fork
def test_a_child_that_dies_is_reported_with_its_exit_code():
    def die(i):
        os._exit(7)

    with pytest.raises(RuntimeError, match=r"died without a result \(exit code 7\)"):
        map_in_processes(die, [0, 1], processes=2, progress=False)


@needs_fork
def test_a_hung_child_is_stopped_at_the_timeout_and_named():
    def hang_on_one(i):
        if i == 1:
            time.sleep(600)
        return i

    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"item 1 \(1\) ran past the timeout of 2 s"):
        map_in_processes(hang_on_one, [0, 1, 2], processes=2, progress=False, timeout=2)
    assert time.monotonic() - start < 30
    assert map_in_processes(hang_on_one, [0, 2], processes=2, progress=False, timeout=60) == [0, 2]


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "5"])
def test_a_timeout_that_is_not_a_positive_number_is_refused(bad):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        map_in_processes(abs, [1, 2], progress=False, timeout=bad)


def test_the_serial_path_sets_the_thread_count_and_restores_it():
    before = torch.get_num_threads()
    seen = map_in_processes(lambda _: torch.get_num_threads(), [0, 1], processes=1, threads=3, progress=False)
    assert seen == [3, 3] and torch.get_num_threads() == before
    with torch_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kw", [dict(processes=0), dict(threads=0)])
def test_bad_counts_are_refused(kw):
    with pytest.raises(ValueError, match="must be >= 1"):
        map_in_processes(abs, [1], progress=False, **kw)
