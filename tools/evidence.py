"""The runs docs/EVIDENCE.md asks for before notebook 10's ablation: the world sweep and the pilot.

    python tools/evidence.py sweep  [--phase realism|oracle] [--all] [--values 1 0.75 0.5 0.25 0] [--seeds 0 1 2]
    python tools/evidence.py pilot  [--seeds 0 1 2 3] [--out docs/evidence]

``sweep`` measures the realism targets (R1-R5) of the lab world at each value of the
camera-background knob, largest first (``--phase realism``; it stops at the first value that meets
every target, the one docs/EVIDENCE.md's rule chooses, unless ``--all``), and trains +E+C and
+E+C (oracle) at each value for the oracle - C curve (``--phase oracle``: shown, never used to choose). ``pilot`` trains source-only, +E, +E+C and +E+C+N on the
frozen world for the power analysis. Both run ``laptop``-sized ECN runs (one torch thread each,
two at a time), cached by :mod:`reidlab.lessons.evidence` under the same keys notebook 10 uses,
and write JSON (and for the sweep a CSV and a figure) into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reidlab.data.datasets import load_reid_dataset  # noqa: E402
from reidlab.data.synth import make_synthetic_reid  # noqa: E402
from reidlab.data.synth.world import DEFAULT_CAMERA_BACKGROUND  # noqa: E402
from reidlab.ecn import ECNConfig, pretrained_weights  # noqa: E402
from reidlab.lessons import evidence  # noqa: E402
from reidlab.lessons.parallel import map_in_processes  # noqa: E402
from reidlab.lessons.stats import paired_t, seeds_for_power  # noqa: E402


def lab_config(source: str, target: str, **kw) -> ECNConfig:
    """Notebook 10's run: the laptop profile's sizes on the lab world, in memory, one process."""
    return ECNConfig.from_profile("laptop", source=source, target=target, camstyle="folder", eval_source=False,
                                  num_workers=0, device="cpu", **kw)


def worlds(value: float) -> tuple[str, str]:
    """The lab source and target trees at knob ``value`` (generated once, here, before any child forks).

    At the chosen value the domains are named as notebook 10 names them, so that the sweep's runs
    there are notebook 10's own runs (the same configs and cache keys), trained once.
    """
    if value == DEFAULT_CAMERA_BACKGROUND:
        for name in ("synth_market", "synth_duke"):
            load_reid_dataset(name, scale="lab", seed=0)
        return "synth_market", "synth_duke"
    src = make_synthetic_reid(None, "synth_market", "lab", 0, camera_background=value)
    tgt = make_synthetic_reid(None, "synth_duke", "lab", 0, camera_background=value)
    return str(src), str(tgt)


def _run(job):
    config, keep = job
    return evidence.ecn_run(config, keep_weights=keep)


def _load_rows(path: Path) -> dict[float, dict]:
    return {r["camera_background"]: r for r in json.loads(path.read_text())} if path.is_file() else {}


def sweep(args: argparse.Namespace) -> None:
    """Phase ``realism``: the targets at each knob value, largest first, stopping at the first value
    that meets them all unless ``--all`` (the choice rule of docs/EVIDENCE.md needs no more).
    Phase ``oracle``: +E+C and +E+C (oracle) at each value already measured, for the figure."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "world_sweep.json"
    rows = _load_rows(path)
    for value in sorted(args.values, reverse=True):
        t0 = time.perf_counter()
        src, tgt = worlds(value)
        base = lab_config(src, tgt)
        pretrained_weights(base, "cpu")  # once, in this process
        row = rows.get(value, {"camera_background": value})
        if args.phase == "realism":
            jobs = []
            for seed in args.seeds:
                so = base.replace(invariance="source-only", seed=seed)
                jobs += [("source-only", so), ("target-supervised", evidence.supervised(so))]
            results = map_in_processes(lambda job: evidence.ecn_run(job[1]), jobs, processes=2, threads=1,
                                       progress=False)
            by = {(label, config.seed): res for (label, config), res in zip(jobs, results)}
            real = evidence.realism(base, list(args.seeds), by)
            row.update({f"met {k}": v for k, v in real["met"].items()})
            row.update({
                "pretrained_only_mAP": real["mAP"]["pretrained only"][0],
                "untrained_mAP": float(np.mean(real["mAP"]["untrained"])),
                "direct_transfer_mAP": float(np.mean(real["mAP"]["direct transfer"])),
                "supervised_mAP": float(np.mean(real["mAP"]["target-supervised"])),
                "dt_minus_pretrained": real["dt_minus_pretrained"], "supervised_minus_dt": real["supervised_minus_dt"],
                "over_untrained": float(np.mean(real["over_untrained"])),
                "of_supervised": float(np.mean(real["of_supervised"])),
                "lift_untrained": float(np.mean(real["camera_lift"]["untrained"])),
                "lift_pretrained": real["camera_lift"]["pretrained only"][0],
                "lift_source_trained": float(np.mean(real["camera_lift"]["source-trained"])),
                "probe_new": real["probe"]["new"], "probe_old": real["probe"]["old"],
                "below_chance": real["below_chance_after_epoch_1"], "realism_seconds": time.perf_counter() - t0,
                "detail": real,
            })
        else:
            jobs = [base.replace(invariance="E+C", camstyle=camstyle, seed=seed)
                    for seed in args.seeds for camstyle in ("folder", "oracle")]
            results = map_in_processes(evidence.ecn_run, jobs, processes=2, threads=1, progress=False)
            gap = [100 * (o["metrics"]["mAP_trapezoid"] - c["metrics"]["mAP_trapezoid"])
                   for c, o in zip(results[::2], results[1::2])]
            mean, half, _ = paired_t(gap)
            row.update({"oracle_minus_c_trapezoid": [mean, half], "oracle_seconds": time.perf_counter() - t0})
        rows[value] = row
        print(json.dumps({k: v for k, v in row.items() if k != "detail"}), flush=True)
        path.write_text(json.dumps(sorted(rows.values(), key=lambda r: -r["camera_background"]), indent=1,
                                   default=float) + "\n")
        if args.phase == "realism" and not args.all and all(row[k] for k in row if k.startswith("met ")):
            print(f"chosen: {value} (the largest value meeting every target)", flush=True)
            break
    if all("oracle_minus_c_trapezoid" in r for r in rows.values()):
        _sweep_figure(list(rows.values()), out / "world_sweep.png")


def _sweep_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["camera_background"])
    x = [r["camera_background"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    m, h = zip(*[r["oracle_minus_c_trapezoid"] for r in rows])
    axes[0].errorbar(x, m, yerr=h, marker="o", capsize=3)
    axes[0].axhline(0, color="grey", lw=0.8)
    axes[0].set(xlabel="camera_background (share of own-scene images)", ylabel="mAP points (trapezoid)",
                title="+E+C (oracle) - +E+C")
    axes[1].plot(x, [r["probe_new"] for r in rows], marker="o", label="new camera")
    axes[1].plot(x, [r["probe_old"] for r in rows], marker="s", label="old camera")
    axes[1].set(xlabel="camera_background", ylabel="share of CamStyle images", title="R5: where CamStyle lands")
    axes[1].legend(fontsize=8)
    for key, label in (("lift_untrained", "untrained"), ("lift_pretrained", "pretrained"),
                       ("lift_source_trained", "source-trained")):
        axes[2].plot(x, [r[key] for r in rows], marker="o", label=label)
    axes[2].axhline(1, color="grey", lw=0.8)
    axes[2].set(xlabel="camera_background", ylabel="x chance", title="R3: same-camera strangers")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def pilot(args: argparse.Namespace) -> None:
    """Seeds of source-only (evaluated every epoch, for the steps rule), +E, +E+C and +E+C+N on the
    frozen world, under the names notebook 10 uses (so the ECN rows are its runs of these seeds)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = lab_config("synth_market", "synth_duke")
    for name in ("synth_market", "synth_duke"):
        load_reid_dataset(name, scale=base.synth_scale, seed=0)
    pretrained_weights(base, "cpu")
    rows = {"source-only": dict(invariance="source-only", eval_every=1), "+E": dict(invariance="E"),
            "+E+C": dict(invariance="E+C"), "+E+C+N": dict(invariance="E+C+N")}
    jobs = [(label, base.replace(**change, seed=s)) for s in args.seeds for label, change in rows.items()]
    results = map_in_processes(lambda job: evidence.ecn_run(job[1]), jobs, processes=2, threads=1, progress=False)
    values = {label: [] for label in rows}
    curves = []
    for (label, _), res in zip(jobs, results):
        values[label].append(100 * res["metrics"]["mAP_trapezoid"])
        if label == "source-only":
            curves.append([100 * r["mAP"] for r in res["history"]])
    family = [("+E", "source-only"), ("+E+C", "+E"), ("+E+C+N", "+E+C"), ("+E+C+N", "source-only")]
    sds = {f"{a} - {b}": float(np.std(np.subtract(values[a], values[b]), ddof=1)) for a, b in family}
    worst = max(sds.values())
    curve = np.mean(curves, axis=0)
    last_quarter = curve[-(len(curve) // 4 + 1):]
    rise = float((last_quarter[-1] - last_quarter[0]) / (len(last_quarter) - 1))
    report = {"seeds": args.seeds, "metric": "mAP_trapezoid (%)", "values": values, "sd_paired": sds,
              "worst_sd": worst, "seeds_needed_3pt_80pct_holm11": seeds_for_power(worst, 3.0, family=11),
              "seeds_needed_by_comparison": {k: seeds_for_power(v, 3.0, family=11) for k, v in sds.items()},
              "means": {k: float(np.mean(v)) for k, v in values.items()},
              "source_only_mAP_per_epoch": curve.tolist(), "rise_per_epoch_last_quarter": rise,
              "double_the_epochs": rise > 1.0}
    print(json.dumps(report, indent=1))
    (out / "pilot.json").write_text(json.dumps(report, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--phase", choices=("realism", "oracle"), default="realism")
    s.add_argument("--all", action="store_true", help="realism at every value, not only down to the chosen one")
    s.add_argument("--values", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25, 0.0],
                   help="knob values (the oracle phase of docs/EVIDENCE.md runs --values 1 0)")
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    s.add_argument("--out", default=str(ROOT / "docs" / "evidence"))
    q = sub.add_parser("pilot")
    q.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    q.add_argument("--out", default=str(ROOT / "docs" / "evidence"))
    args = p.parse_args(argv)
    {"sweep": sweep, "pilot": pilot}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
