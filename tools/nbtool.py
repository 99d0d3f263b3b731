#!/usr/bin/env python
"""Notebook chores for the series: execute, time, author.

    python tools/nbtool.py run --out build/run notebooks/*.ipynb   # make run / make figures
    python tools/nbtool.py execute --profile laptop notebooks/03_*.ipynb  # refresh committed outputs
    python tools/nbtool.py export notebooks/03_x.ipynb /tmp/03_x.py  # edit as plain text ...
    python tools/nbtool.py build /tmp/03_x.py notebooks/03_x.ipynb   # ... and back (then `execute`)
    python tools/nbtool.py figures --out figures notebooks/*.ipynb   # make figures

``figures`` writes the key figure of each notebook (the cell that calls ``savefig(fig, "NAME")``)
to ``figures/NAME.png``, taken from the notebook's committed output: the README and the site
then show exactly what the committed run drew, never a figure from another run or profile.

``run`` writes executed copies elsewhere and never touches the tracked notebooks;
``execute`` rewrites them in place, which is how committed outputs are produced (an
honest top-to-bottom run, in a fresh kernel, with the profile printed by the setup cell).

The text format of ``export``/``build`` is the "percent" format: a line ``# %%`` starts a
code cell, ``# %% [markdown]`` a markdown cell whose lines are ``# ``-prefixed; cell
metadata may follow as JSON, e.g. ``# %% {"tags": ["raises-exception"]}``.
"""
from __future__ import annotations

import argparse
import base64
import json
import re
import os
import sys
import time
from pathlib import Path

import nbformat

KERNEL = "python3"


def write_notebook(nb, out: Path) -> None:
    """Write ``nb`` to ``out`` through the project's atomic writer: a full disk or a kill
    leaves the previous file whole, never truncated JSON."""
    from reidlab.files import atomic_write_text

    text = nbformat.writes(nb)
    atomic_write_text(out, text if text.endswith("\n") else text + "\n")


def execute(path: Path, out: Path, *, profile: str | None, timeout: int) -> tuple[bool, float, str]:
    """Execute ``path`` top to bottom in a fresh kernel (cwd = its folder) and write ``out``.

    Returns ``(ok, seconds, reason)``. A notebook that cannot be read, a failing cell, a cell
    past ``timeout`` and a dead kernel are reported (``ok`` False, the reason in one line), so
    that the notebooks after it still run. What did execute is written, failed cells included.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    try:
        nb = nbformat.read(path, as_version=4)
    except (OSError, ValueError) as err:  # missing, unreadable, not JSON, not a notebook
        return False, 0.0, f"cannot read {path}: {err}".splitlines()[0][:200]
    if profile:
        os.environ["REIDLAB_PROFILE"] = profile
    client = NotebookClient(
        nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent.resolve())}}
    )
    t0 = time.perf_counter()
    ok, err = True, ""
    try:
        client.execute()
    except CellExecutionError as e:
        ok, err = False, str(e).strip().splitlines()[-1][:200]
    except Exception as e:  # noqa: BLE001 - a cell timeout, a dead kernel: this notebook fails, the others run
        ok, err = False, f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:200]
    seconds = time.perf_counter() - t0
    write_notebook(nb, out)
    return ok, seconds, err


def cmd_run(args: argparse.Namespace, *, in_place: bool = False) -> int:
    rows = []
    for nb in args.notebooks:
        src = Path(nb)
        dst = src if in_place else Path(args.out) / src.name
        print(f"running {src} ...", flush=True)
        ok, sec, err = execute(src, dst, profile=args.profile, timeout=args.timeout)
        rows.append((src.name, sec, ok, err))
    width = max([len(r[0]) for r in rows] + [8])
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  ok")
    for name, sec, ok, err in rows:
        print(f"{name:<{width}}  {sec:8.1f}  {'yes' if ok else 'NO  ' + err}")
    total = sum(r[1] for r in rows)
    print(f"{'total':<{width}}  {total:8.1f}  {sum(r[2] for r in rows)}/{len(rows)} ok")
    return 0 if all(r[2] for r in rows) else 1


SAVEFIG = re.compile(r"savefig\(.*,\s*[\"']([\w-]+)[\"']\)")


def key_figures(nb) -> dict[str, bytes]:
    """``{name: PNG bytes}`` for every cell that calls ``savefig(..., "name")``, from its output.

    The cell must have exactly one PNG output (the figure it saves); anything else is an
    error, since which figure was meant could only be guessed.
    """
    found: dict[str, bytes] = {}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        for name in SAVEFIG.findall("".join(cell["source"])):
            pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
            if len(pngs) != 1:
                raise ValueError(f"cell {i} saves figure {name!r} but has {len(pngs)} PNG outputs (expected 1; "
                                 "execute the notebook first)")
            found[name] = base64.b64decode("".join(pngs[0]) if isinstance(pngs[0], list) else pngs[0])
    return found


def cmd_figures(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in args.notebooks:
        for name, png in key_figures(json.loads(Path(path).read_text())).items():
            (out / f"{name}.png").write_bytes(png)
            print(f"{out / (name + '.png')}  <- {Path(path).name}")
    return 0


def to_percent(nb) -> str:
    parts = []
    for cell in nb.cells:
        meta = {k: v for k, v in cell.metadata.items() if k in ("tags", "nbgrader")}
        suffix = (" " + json.dumps(meta)) if meta else ""
        if cell.cell_type == "markdown":
            body = "\n".join(("# " + line) if line else "#" for line in cell.source.splitlines())
            parts.append(f"# %% [markdown]{suffix}\n{body}")
        else:
            parts.append(f"# %%{suffix}\n{cell.source}")
    return "\n\n".join(parts) + "\n"


def from_percent(text: str):
    nb = nbformat.v4.new_notebook()
    cells: list[tuple[str, dict, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            rest = line[4:].strip()
            kind = "code"
            if rest.startswith("[markdown]"):
                kind, rest = "markdown", rest[len("[markdown]") :].strip()
            cells.append((kind, json.loads(rest) if rest else {}, []))
        elif cells:
            cells[-1][2].append(line)
    for kind, meta, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        if kind == "markdown":
            src = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines)
            cell = nbformat.v4.new_markdown_cell(src)
        else:
            cell = nbformat.v4.new_code_cell("\n".join(lines))
        cell.metadata.update(meta)
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "execute"):
        s = sub.add_parser(name)
        s.add_argument("notebooks", nargs="+")
        s.add_argument("--profile", default=None, help="ci | laptop | gpu (default: reidlab's default)")
        s.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
        if name == "run":
            s.add_argument("--out", default="build/run")
    s = sub.add_parser("figures")
    s.add_argument("notebooks", nargs="+")
    s.add_argument("--out", default="figures")
    s = sub.add_parser("export")
    s.add_argument("notebook")
    s.add_argument("out")
    s = sub.add_parser("build")
    s.add_argument("src")
    s.add_argument("out")
    args = p.parse_args(argv)
    if args.cmd == "run":
        return cmd_run(args)
    if args.cmd == "execute":
        return cmd_run(args, in_place=True)
    if args.cmd == "figures":
        return cmd_figures(args)
    if args.cmd == "export":
        Path(args.out).write_text(to_percent(nbformat.read(args.notebook, as_version=4)))
        return 0
    write_notebook(from_percent(Path(args.src).read_text()), Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
