"""reidlab.lessons.stats: the series' decision rule (paired t over seeds, Holm) and its power analysis."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as sps

from reidlab.lessons.stats import compare, comparison_table, holm, paired_power, paired_t, seeds_for_power


def test_paired_t_is_scipys_paired_test():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 12):
        a, b = rng.normal(30, 3, n), rng.normal(29, 3, n)
        mean, half, p = paired_t(a - b)
        ref = sps.ttest_rel(a, b)
        assert p == pytest.approx(ref.pvalue, rel=1e-10)
        assert mean == pytest.approx(np.mean(a - b))
        assert half == pytest.approx(sps.t.ppf(0.975, n - 1) * np.std(a - b, ddof=1) / np.sqrt(n))


def test_paired_t_without_spread():
    assert paired_t([0.0, 0.0, 0.0]) == (0.0, 0.0, 1.0)
    assert paired_t([1.2, 1.2, 1.2])[2] == 0.0
    for bad in ([1.0], [1.0, float("nan")], []):
        with pytest.raises(ValueError):
            paired_t(bad)


def _holm_by_definition(p):
    """Holm's adjusted p-value of each hypothesis, from its definition: the largest (m - j) p_(j) over ranks j up to its own."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [0.0] * m
    for rank, i in enumerate(order):
        out[i] = min(1.0, max((m - j) * p[order[j]] for j in range(rank + 1)))
    return out


def test_holm_matches_its_definition_and_is_never_below_the_raw_p():
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 11):
        for _ in range(20):
            p = rng.uniform(0, 0.2, m).tolist()
            adj = holm(p)
            assert adj == pytest.approx(_holm_by_definition(p))
            assert all(a >= q for a, q in zip(adj, p)) and all(a <= 1 for a in adj)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])  # worked by hand
    with pytest.raises(ValueError):
        holm([0.1, 1.5])


def test_compare_decides_by_the_adjusted_p_and_keeps_the_order():
    values = {"a": [31.0, 32.5, 30.8, 33.0], "b": [28.0, 29.1, 28.2, 29.9], "c": [31.2, 32.1, 31.5, 32.6]}
    family = [("a", "b"), ("a", "c"), ("c", "b")]
    res = compare(family, values)
    assert [c.name for c in res] == ["a - b", "a - c", "c - b"]
    assert res[0].verdict == "higher" and res[1].verdict == "cannot tell"
    raw = [paired_t(np.subtract(values[x], values[y]))[2] for x, y in family]
    assert [c.p_holm for c in res] == pytest.approx(holm(raw))
    lower = compare([("b", "a")], values)[0]
    assert lower.verdict == "lower" and lower.mean < 0
    table = comparison_table(res)
    assert "a - b" in table and "Holm" in table and "cannot tell" in table
    with pytest.raises(ValueError, match="same seeds"):
        compare([("a", "d")], {**values, "d": [1.0, 2.0]})
    with pytest.raises(KeyError):
        compare([("a", "zz")], values)
    with pytest.raises(ValueError):
        compare([], values)


def test_a_family_can_turn_a_single_finding_into_cannot_tell():
    """The point of Holm: p = 0.02 alone is a finding; among ten comparisons it is not."""
    values = {"x": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [0.1, 1.2, 1.5, 3.6, 3.9]}
    alone = compare([("x", "y")], values)[0]
    assert alone.p < 0.05 and alone.finding
    noise = {f"n{i}": list(np.random.default_rng(i).normal(0, 1, 5)) for i in range(9)}
    family = [("x", "y")] + [(f"n{i}", "y") for i in range(9)]
    among = compare(family, {**values, **noise})[0]
    assert among.p == alone.p and not among.finding


def test_power_matches_a_simulation_and_the_seed_count_is_the_smallest():
    rng = np.random.default_rng(2)
    n, sd, delta, alpha = 6, 2.0, 3.0, 0.05 / 11
    sims = rng.normal(delta, sd, (20000, n))
    t = sims.mean(1) / (sims.std(1, ddof=1) / np.sqrt(n))
    simulated = np.mean(2 * sps.t.sf(np.abs(t), n - 1) < alpha)
    assert paired_power(n, sd, delta, alpha) == pytest.approx(simulated, abs=0.015)
    need = seeds_for_power(sd, delta, family=11)
    assert paired_power(need, sd, delta, 0.05 / 11) >= 0.8 > paired_power(need - 1, sd, delta, 0.05 / 11)
    # more noise or a larger family never needs fewer seeds
    for sd_, family in itertools.product((1.0, 2.0, 4.0), (1, 5, 11)):
        assert seeds_for_power(sd_, 3.0, family=family) <= seeds_for_power(2 * sd_, 3.0, family=family)
        assert seeds_for_power(sd_, 3.0, family=family) <= seeds_for_power(sd_, 3.0, family=family + 5)
    assert seeds_for_power(1.0, 3.0) < seeds_for_power(4.0, 3.0) < seeds_for_power(4.0, 3.0, family=11)
    with pytest.raises(ValueError, match="more than"):
        seeds_for_power(50.0, 0.5, max_n=20)


@pytest.mark.parametrize("n", [4, 5, 6, 8])
def test_power_is_a_number_when_the_effect_is_large(n):
    """A precise pilot (small sd) makes the noncentrality large, where scipy's noncentral t returns
    nan for the wrong-sign tail; a nan power read as "not enough" once asked for 9 seeds where 5 do."""
    rng = np.random.default_rng(n)
    sd, delta, alpha = 0.9, 3.0, 0.05 / 11
    sims = rng.normal(delta, sd, (40000, n))
    t = sims.mean(1) / (sims.std(1, ddof=1) / np.sqrt(n))
    simulated = np.mean(2 * sps.t.sf(np.abs(t), n - 1) < alpha)
    assert paired_power(n, sd, delta, alpha) == pytest.approx(simulated, abs=0.01)


def test_a_precise_pilot_needs_few_seeds():
    assert seeds_for_power(0.9, 3.0, family=11) == 5
    powers = [paired_power(n, 0.9, 3.0, 0.05 / 11) for n in range(2, 30)]
    assert all(np.isfinite(powers)) and powers == sorted(powers)
