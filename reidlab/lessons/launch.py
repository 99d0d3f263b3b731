"""Start a short script on several processes from a notebook, the way a user launches a real run (notebook 11).

A function defined in a notebook cannot be sent to ``torch.multiprocessing.spawn``ed processes
(they import it by name, and a kernel's ``__main__`` has no file), and the lesson's code should be
visible in the notebook anyway. So notebook 11 writes each multi-process experiment as a short
script (:func:`write_script`), starts it with ``torchrun`` (:func:`torchrun`), which is the
command a user types for a real run on several GPUs, and reads back the small files the script
wrote. What repeats between those cells lives here:

* the command line: ``python -m torch.distributed.run --standalone --nproc-per-node K ...``
  (``torchrun`` is the same program; :func:`command` spells it the short way for printing);
* the environment every process needs: this checkout first on ``PYTHONPATH`` (the script runs in
  a fresh interpreter, outside the notebook's folder), one OpenMP thread per process (K processes
  of N threads each on a few cores run small networks many times slower) and a timeout for the
  collectives (``REIDLAB_DIST_TIMEOUT``), so that a crashed process makes the others fail
  instead of wait;
* a failure that says what failed: the command and the end of its output, not a bare exit code.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import reidlab

__all__ = ["Launch", "REPO_ROOT", "command", "torchrun", "write_script"]

#: The checkout that holds ``reidlab`` (put first on the launched processes' ``PYTHONPATH``).
REPO_ROOT = Path(reidlab.__file__).resolve().parents[1]

#: Seconds a collective waits for a process that died, in a launched run (reidlab's default is 600).
DIST_TIMEOUT = 120

#: Lines of a failed launch's error output that the ``RuntimeError`` quotes.
OUTPUT_LINES = 60


@dataclass(frozen=True)
class Launch:
    """A finished launch: the command as a user would type it, its output and its wall time."""

    command: str
    stdout: str
    stderr: str
    seconds: float


def write_script(folder: str | os.PathLike, name: str, source: str) -> Path:
    """Write ``source`` (dedented, stripped of leading blank lines) to ``folder/name``; return the path.

    ``name`` must be a plain file name ending in ``.py`` (the launched interpreter runs it as a file).
    """
    if Path(name).name != name or not name.endswith(".py"):
        raise ValueError(f"name must be a file name ending in .py, got {name!r}")
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source).lstrip("\n"), encoding="utf-8")
    return path


def _target(script: str | os.PathLike | None, module: str | None) -> list[str]:
    if (script is None) == (module is None):
        raise ValueError("give exactly one of script (a file) or module (as for python -m)")
    return ["-m", module] if module is not None else [str(script)]


def command(script: str | os.PathLike | None = None, *args: object, nproc: int = 2,
            module: str | None = None) -> str:
    """The ``torchrun`` command that :func:`torchrun` runs, as a user would type it on one machine."""
    return shlex.join(["torchrun", "--standalone", "--nproc-per-node", str(nproc), *_target(script, module),
                       *map(str, args)])


def torchrun(
    script: str | os.PathLike | None = None,
    *args: object,
    nproc: int = 2,
    module: str | None = None,
    cwd: str | os.PathLike | None = None,
    timeout: float = 600,
) -> Launch:
    """Run ``script`` (or ``-m module``) with ``args`` on ``nproc`` processes of this machine; wait for it.

    Each process gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous address from
    torchrun (``--standalone``: a free local port, so several launches can run side by side),
    plus the environment described in the module docstring. Raises ``RuntimeError`` with the
    command and the last lines of its output when any process fails, and
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be an int >= 1, got {nproc!r}")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *_target(script, module), *map(str, args)]
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1",
           "REIDLAB_DIST_TIMEOUT": os.environ.get("REIDLAB_DIST_TIMEOUT", str(DIST_TIMEOUT))}
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    seconds = time.perf_counter() - t0
    shown = command(script, *args, nproc=nproc, module=module)
    if proc.returncode != 0:
        # torchrun's own report of the failure takes ~30 lines after the processes' messages: keep enough of both
        tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-OUTPUT_LINES:])
        raise RuntimeError(f"`{shown}` failed with exit code {proc.returncode}; the end of its output:\n{tail}")
    return Launch(command=shown, stdout=proc.stdout, stderr=proc.stderr, seconds=seconds)
