"""The project's install files agree with each other."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(reqs):
    return {re.split(r"[<>=!~ \[]", r.strip(), maxsplit=1)[0].lower() for r in reqs}


def test_environment_yml_names_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # dev names the site extra as "reidlab[site]": count its packages, not the self-reference
    dev = [r for r in extras["dev"] if not r.startswith("reidlab[")]
    assert "reidlab[site]" in extras["dev"]
    declared = _names(project["dependencies"]) | _names(dev) | _names(extras["site"])
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    pip_section = [line.strip()[2:] for line in lines[start + 1 :] if line.strip().startswith("- ")]
    listed = _names(p for p in pip_section if not p.startswith("-e"))
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject: {declared - listed}"
    assert any(p.startswith("-e .") for p in pip_section), "environment.yml must install this package"


def test_torch_is_not_pinned_to_a_cpu_wheel():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch") and not d.startswith("torchvision"))
    assert "==" not in torch_req and "+cpu" not in torch_req


def test_make_test_lowest_installs_pyprojects_lower_bounds():
    """The pair `make test-lowest` installs is the pair pyproject.toml claims as its minimum."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {n: re.search(r">=([\d.]+)", d).group(1) for d in deps for n in ("torch", "torchvision")
              if re.match(rf"{n}\s*>=", d)}
    make = (ROOT / "Makefile").read_text()
    pinned = {n: re.search(rf"^{n.upper()}_LOWEST\s*:=\s*(\S+)", make, re.M).group(1) for n in ("torch", "torchvision")}
    for name in ("torch", "torchvision"):
        assert tuple(map(int, pinned[name].split("."))) == tuple(map(int, (bounds[name] + ".0").split(".")[:3])), \
            f"Makefile tests {name} {pinned[name]}, pyproject claims >= {bounds[name]}"
    assert "make test-lowest" in (ROOT / ".ci" / "run").read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_console_script_points_at_the_cli():
    """``reidlab-ecn`` (pyproject's console script) runs the same ``main`` as ``python -m reidlab.ecn``."""
    import importlib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attr = scripts["reidlab-ecn"].partition(":")
    main = getattr(importlib.import_module(module), attr)
    assert main(["--help"]) == 0
    assert main is importlib.import_module("reidlab.ecn").main
