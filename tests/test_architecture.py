"""The package's shape, as docs/ARCHITECTURE.md promises it: two layers, no cycles, no side effects
on import, small files, and a project that speaks only of itself.

Most checks read the source with ``ast`` (what may import what); two run Python in a subprocess
(the library without the teaching dependencies; importing every module changes no global state).
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reidlab"
TEACHING_ONLY = ("matplotlib", "seaborn", "ipywidgets", "IPython")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[ast.stmt, str, bool]]:
    """Every import in ``path``: (node, absolute module imported, inside a function?)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, a.name, id(node) in inner) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in MODULES else module for a in node.names]
            found += [(node, t, id(node) in inner) for t in targets]
    return found


def _is_lesson(module: str) -> bool:
    return module == "reidlab.lessons" or module.startswith("reidlab.lessons.")


def test_the_library_never_imports_the_lessons_or_teaching_packages():
    offenders = [
        f"{name} imports {target}"
        for name, path in MODULES.items() if not _is_lesson(name)
        for _, target, _ in _imports(path)
        if _is_lesson(target) or target.split(".")[0] in TEACHING_ONLY
    ]
    assert offenders == []


def test_no_import_inside_a_function():
    """An import inside a function hides a cycle or a dependency; every import sits at the top of its module."""
    offenders = [f"{name}:{node.lineno} imports {target}" for name, path in MODULES.items()
                 for node, target, inner in _imports(path) if inner]
    assert offenders == []


def test_no_import_cycles():
    graph = {name: {t for _, t, _ in _imports(path) if t in MODULES and t != name} for name, path in MODULES.items()}
    cycles = []

    def visit(node: str, stack: list[str], done: set[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack + [nxt], done)
        done.add(node)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name], done)
    assert cycles == []


def _code_lines(node: ast.AST, lines: list[str]) -> int:
    """Lines of code of a function or class: no docstring, blank or comment-only lines."""
    body = getattr(node, "body", [])
    doc = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        doc = set(range(body[0].lineno, body[0].end_lineno + 1))
    return sum(1 for i in range(node.lineno, node.end_lineno + 1)
               if i not in doc and lines[i - 1].strip() and not lines[i - 1].strip().startswith("#"))


def test_files_functions_and_classes_stay_small():
    """One idea per file: modules of at most ~600 lines, functions of ~80 lines of code, classes of ~150."""
    too_big = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        if len(lines) > 600:
            too_big.append(f"module {name}: {len(lines)} lines")
        for node in ast.walk(ast.parse("\n".join(lines))):
            limit = 80 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else \
                150 if isinstance(node, ast.ClassDef) else None
            if limit and _code_lines(node, lines) > limit:
                too_big.append(f"{name}.{node.name}: {_code_lines(node, lines)} lines of code")
    assert too_big == []


BLOCKER = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TEACHING_ONLY!r}:
            raise ImportError(f"{{name}} is blocked: the library must run without the teaching packages")
sys.meta_path.insert(0, Block())
"""

LIBRARY_WITHOUT_LESSONS = BLOCKER + """
import pkgutil, importlib, tempfile, torch, reidlab
for m in pkgutil.walk_packages(reidlab.__path__, "reidlab."):
    if not m.name.startswith("reidlab.lessons") and not m.name.endswith("__main__"):
        importlib.import_module(m.name)
from reidlab.models import ReIDNet
from reidlab.memory import InvarianceLoss
from reidlab.evaluation import evaluate_rank
from reidlab.dsbn import convert_dsbn, dsbn_layers
from reidlab.data.synth import Scale, make_synthetic_reid
from reidlab.data.datasets import load_reid_dataset

torch.manual_seed(0)
net = ReIDNet(4, "resnet18", num_features=16, freeze=None).train()
crit = InvarianceLoss(8, 16, knn=2)
out = net(torch.randn(4, 3, 32, 16))
crit(out["tgt_feat"], torch.tensor([0, 1, 2, 3]), 0).backward()
assert crit.memory[:4].abs().sum() > 0
res = evaluate_rank(torch.rand(3, 5), [1, 2, 3], [1, 2, 3, 1, 2], [0, 0, 0], [1, 1, 1, 1, 1], max_rank=5)
assert 0 <= res.mAP <= 1
assert len(dsbn_layers(convert_dsbn(net))) > 0
with tempfile.TemporaryDirectory() as root:
    micro = Scale(train_ids=3, train_images=9, test_ids=2, query=None, gallery_real=6, distractors=1, junk=1)
    path = make_synthetic_reid(root, "synth_market", micro, seed=0, image_size=(32, 16), workers=1)
    ds = load_reid_dataset(path)
    assert len(ds.train) == 9 and ds.num_train_pids == 3
assert not any(m.split(".")[0] in {blocked} for m in sys.modules), "a teaching package was imported"
print("library ok")
""".replace("{blocked}", repr(TEACHING_ONLY))


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_the_library_runs_without_matplotlib_seaborn_ipywidgets_or_ipython():
    proc = _run(LIBRARY_WITHOUT_LESSONS)
    assert proc.returncode == 0 and "library ok" in proc.stdout, proc.stderr[-3000:]


def test_the_blocker_really_blocks():
    """The test above proves something only if the blocker makes a teaching import fail."""
    proc = _run(BLOCKER + "import reidlab.lessons.viz\n")
    assert proc.returncode != 0 and "is blocked" in proc.stderr


IMPORT_EVERYTHING = """
import importlib, logging, pkgutil, random, sys, types, warnings
import numpy as np, torch
# third-party packages first: their own import-time effects (e.g. a warnings filter sympy adds
# when torchvision.ops loads) are not ours to answer for
import IPython, PIL.Image, ipywidgets, matplotlib.pyplot, seaborn, torchvision, torchvision.ops, tqdm.auto
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()

def snapshot():
    return {
        "deterministic": (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled()),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
                  torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32),
        "dtype": torch.get_default_dtype(), "threads": torch.get_num_threads(),
        "rng": (torch.random.get_rng_state().sum().item(), random.getstate()[1][:4], np.random.get_state()[1][:4].tolist()),
        "warnings": len(warnings.filters), "excepthook": sys.excepthook,
        "logging": (logging.root.level, len(logging.root.handlers)),
        "custom_exceptions": tuple(shell.custom_exceptions),
    }

before = snapshot()
import reidlab
names = [m.name for m in pkgutil.walk_packages(reidlab.__path__, "reidlab.") if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
after = snapshot()
assert before == after, {k: (before[k], after[k]) for k in before if before[k] != after[k]}
swapped = [n for n in names if type(sys.modules[n]) is not types.ModuleType]
assert not swapped, swapped
print(len(names), "modules imported, no global state changed")
"""


def test_importing_any_module_changes_no_global_state():
    proc = _run(IMPORT_EVERYTHING)
    assert proc.returncode == 0 and "no global state changed" in proc.stdout, proc.stderr[-3000:]


def test_the_cli_runs_as_a_module():
    proc = subprocess.run([sys.executable, "-m", "reidlab.ecn", "--help"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "--knn-start" in proc.stdout and "--out" in proc.stdout, proc.stderr


# Written in pieces so that this file does not match the words it looks for (other checks grep for them too).
OUTSIDE = re.compile("|".join([r"\.\./sha" + "red", r"(?<![\w-])sour" + "ces/", r"DES" + r"IGN\.md", r"STY" + r"LE\.md",
                               "steer" + "ing", r"DEVELO" + r"PERS\.md"]))


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / f for f in out.splitlines()]
    return [f for f in files if f.suffix in {".py", ".md", ".ipynb", ".cfg", ".toml", ".yml", ""} and f.is_file()]


def test_the_project_refers_to_no_document_outside_the_repository():
    """Sources are cited by title, site or author (never a path to files that are not in the repository)."""
    hits = []
    for path in _tracked_text_files():
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:120]}")
    assert hits == []
