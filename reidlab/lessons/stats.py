"""The series' one decision rule, and the power analysis that sizes its runs (docs/EVIDENCE.md).

**The rule.** A notebook names its *family* of comparisons before it runs them (each "row A
minus row B", the same seeds for both rows). For each comparison the paired differences over
seeds (seed s of A minus seed s of B: same initial head, same batches) get a two-sided one-sample
t-test against 0; the family's p-values are adjusted by Holm's step-down method, and a
comparison is a **finding** when its adjusted p-value is below 0.05. The printed interval is the
plain 95 % t interval of the mean difference; the decision is the adjusted p-value's. Rows that
are not in the family are described, never concluded on.

Why paired: two runs with the same seed share their initial weights and data order, so their
difference cancels much of the seed-to-seed spread. Why Holm: a notebook that reports ten
comparisons at 5 % each would call one "finding" in two by chance alone; Holm keeps the chance
of *any* false finding in the family at 5 %, and is never less powerful than Bonferroni.

What an interval covers: the seeds vary the network's initial head, the data order and the
augmentations. The world, its test set and the pretrained backbone are fixed, so a finding
holds for *this* world and test set; a second world or another backbone is another experiment.

**Power.** :func:`seeds_for_power` answers "how many seeds does a paired comparison need to
detect a difference of ``delta`` points with probability ``power``?" from the standard deviation
of the paired differences measured in a pilot, at Holm's strictest level (``alpha / m`` for a
family of ``m``), with the noncentral t distribution.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA",
    "Comparison",
    "paired_t",
    "holm",
    "compare",
    "comparison_table",
    "paired_power",
    "seeds_for_power",
]

#: The family-wise error rate of the series' decision rule.
ALPHA = 0.05


@dataclass(frozen=True)
class Comparison:
    """One comparison of a family: row ``a`` minus row ``b``, paired over seeds."""

    a: str
    b: str
    differences: tuple[float, ...]
    mean: float
    half_width: float  # of the 95 % t interval of the mean difference (unadjusted)
    p: float  # two-sided paired t-test
    p_holm: float  # adjusted over the family
    alpha: float = ALPHA

    @property
    def finding(self) -> bool:
        """Whether the family's decision rule calls this difference real (Holm-adjusted p < alpha)."""
        return self.p_holm < self.alpha

    @property
    def verdict(self) -> str:
        """``'higher'``, ``'lower'`` (findings, by the sign of the mean) or ``'cannot tell'``."""
        if not self.finding:
            return "cannot tell"
        return "higher" if self.mean > 0 else "lower"

    @property
    def name(self) -> str:
        return f"{self.a} - {self.b}"


def _finite(values: Iterable[float], what: str) -> np.ndarray:
    x = np.asarray([float(v) for v in values], dtype=float)
    if x.ndim != 1 or len(x) < 2:
        raise ValueError(f"{what}: need at least 2 paired values (seeds), got {len(x)}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: values must be finite, got {x.tolist()}")
    return x


def paired_t(differences: Sequence[float]) -> tuple[float, float, float]:
    """``(mean, half-width of the 95 % t interval, two-sided p-value)`` of paired differences.

    Differences that are all equal have no spread: the p-value is 1 when they are 0 and 0
    otherwise (the t statistic is 0/0 or infinite).
    """
    d = _finite(differences, "paired_t")
    n = len(d)
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if sd == 0.0:
        return mean, 0.0, 1.0 if mean == 0.0 else 0.0
    t = mean / (sd / math.sqrt(n))
    return mean, half, float(2.0 * stats.t.sf(abs(t), n - 1))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (each in [0, 1], monotone in p)."""
    p = np.asarray([float(v) for v in pvalues], dtype=float)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare(
    family: Sequence[tuple[str, str]],
    values: dict[str, Sequence[float]],
    alpha: float = ALPHA,
) -> list[Comparison]:
    """Apply the decision rule to a family of comparisons.

    Parameters
    ----------
    family:
        ``(a, b)`` pairs of row names, each read as "a minus b": the comparisons the notebook
        names before it runs them. Holm's correction runs over all of them together.
    values:
        Each row's numbers, one per seed, in the same seed order for every row.
    alpha:
        The family-wise error rate (0.05).
    """
    if not family:
        raise ValueError("an empty family of comparisons")
    diffs = []
    for a, b in family:
        if a not in values or b not in values:
            raise KeyError(f"no values for {a if a not in values else b!r}")
        va, vb = _finite(values[a], a), _finite(values[b], b)
        if len(va) != len(vb):
            raise ValueError(f"{a} has {len(va)} seeds and {b} {len(vb)}: a paired comparison needs the same seeds")
        diffs.append(va - vb)
    tests = [paired_t(d) for d in diffs]
    adjusted = holm([p for _, _, p in tests])
    return [Comparison(a, b, tuple(float(x) for x in d), mean, half, p, p_adj, alpha)
            for (a, b), d, (mean, half, p), p_adj in zip(family, diffs, tests, adjusted)]


def comparison_table(comparisons: Sequence[Comparison], unit: str = "points") -> str:
    """The family as a text table: mean difference ± 95 % interval, p, Holm-adjusted p, verdict."""
    width = max(len(c.name) for c in comparisons)
    lines = [f"{'comparison':{width}}  {'mean ± 95 % CI (' + unit + ')':>24}  {'p':>7}  {'p (Holm)':>8}  verdict"]
    for c in comparisons:
        lines.append(f"{c.name:{width}}  {c.mean:+10.2f} ± {c.half_width:5.2f}{'':7}  {c.p:7.4f}  {c.p_holm:8.4f}  "
                     f"{c.verdict}")
    lines.append(f"verdict: 'higher' / 'lower' where the Holm-adjusted p < {comparisons[0].alpha:g} over these "
                 f"{len(comparisons)} comparisons, else 'cannot tell'")
    return "\n".join(lines)


def paired_power(n: int, sd: float, delta: float, alpha: float) -> float:
    """Power of a two-sided paired t-test at level ``alpha`` with ``n`` pairs to detect a true mean
    difference ``delta`` when the differences have standard deviation ``sd`` (noncentral t)."""
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if sd <= 0:
        return 1.0
    df = n - 1
    crit = stats.t.ppf(1.0 - alpha / 2.0, df)
    nc = delta / (sd / math.sqrt(n))
    upper = float(stats.nct.sf(crit, df, nc))
    # the wrong-sign tail: tiny once nc is large, where scipy's noncentral t returns nan instead
    lower = float(stats.nct.cdf(-crit, df, nc))
    return upper + (lower if math.isfinite(lower) else 0.0)


def seeds_for_power(sd: float, delta: float = 3.0, *, family: int = 1, alpha: float = ALPHA,
                    power: float = 0.8, max_n: int = 200) -> int:
    """Fewest seeds for which a paired t-test at Holm's strictest level detects ``delta``.

    ``sd`` is the standard deviation of the paired differences (from a pilot); the level is
    ``alpha / family``, what the smallest p-value of a family of ``family`` must beat under
    Holm's rule, so the answer is conservative for the other comparisons. Raises
    ``ValueError`` when even ``max_n`` seeds are not enough.
    """
    if not (sd >= 0 and delta > 0 and family >= 1 and 0 < power < 1):
        raise ValueError(f"need sd >= 0, delta > 0, family >= 1 and 0 < power < 1; got {sd}, {delta}, {family}, {power}")
    level = alpha / family
    for n in range(2, max_n + 1):
        if paired_power(n, sd, delta, level) >= power:
            return n
    raise ValueError(f"more than {max_n} seeds needed for delta={delta} with sd={sd}")
