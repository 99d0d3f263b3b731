"""Tests of reidlab.evaluation: the Market-1501 protocol, by hand and against a reference."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from reidlab.evaluation import (
    AP_RULES,
    Features,
    evaluate_features,
    evaluate_rank,
    extract_features,
    pairwise_distance,
    rank_gallery,
)
from reidlab.rerank import re_ranking
from references import evaluate_rank_reference
from reidlab import evaluation

BOTH = pytest.mark.parametrize("evaluate", [evaluate_rank, evaluate_rank_reference], ids=["fast", "reference"])


# --- the hand-worked example ------------------------------------------------------------------
#
# gallery index:   g0   g1   g2   g3            g4         g5   g6
# pid:              1    2    1    0 (distractor) -1 (junk)  2    1
# camera:           1    2    2    1             2          1    3
G_PIDS = np.array([1, 2, 1, 0, -1, 2, 1])
G_CAMS = np.array([1, 2, 2, 1, 2, 1, 3])
Q_PIDS = np.array([1, 2, 3, 2])
Q_CAMS = np.array([1, 2, 1, 1])
DIST = np.array(
    [
        # g0    g1    g2    g3    g4    g5    g6
        [0.10, 0.20, 0.30, 0.40, 0.05, 0.60, 0.70],  # qA: pid 1, cam 1
        [0.50, 0.90, 0.20, 0.20, 0.10, 0.20, 0.80],  # qB: pid 2, cam 2 (three-way tie at 0.20)
        [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70],  # qC: pid 3, cam 1 (not in the gallery)
        [0.30, 0.10, 0.40, 0.50, 0.60, 0.05, 0.20],  # qD: pid 2, cam 1
    ]
)
# qA: ranked g4 g0 g1 g2 g3 g5 g6. Drop g4 (junk) and g0 (pid 1 seen by cam 1, like the query).
#     Kept: g1 (F), g2 (T), g3 (F, a distractor stays as a negative), g5 (F), g6 (T).
#     True matches at ranks 2 and 5: AP = (1/2 + 2/5) / 2 = 0.45; INP = |G|/R_hard = 2/5 = 0.4.
# qB: ranked g4 | g2 g3 g5 (tied at 0.20: gallery order) | g0 g6 g1. Drop g4 (junk), g1 (pid 2, cam 2).
#     Kept: g2 (F), g3 (F), g5 (T), g0 (F), g6 (F). Match at rank 3: AP = 1/3; INP = 1/3.
# qC: pid 3 never appears in the gallery: skipped, not counted.
# qD: ranked g5 g1 g6 g0 g2 g3 g4. Drop g5 (pid 2, cam 1) and g4 (junk).
#     Kept: g1 (T), g6, g0, g2, g3. Match at rank 1: AP = 1; INP = 1.
# Valid queries: 3. First matches at ranks 2, 3, 1 ->
#     CMC = [1/3, 2/3, 3/3, 1, 1]; mAP = (0.45 + 1/3 + 1) / 3 = 0.59444...; mINP = (0.4 + 1/3 + 1) / 3 = 0.57777...
HAND_AP = [0.45, 1 / 3, math.nan, 1.0]
HAND_INP = [0.4, 1 / 3, math.nan, 1.0]


@BOTH
def test_hand_worked_example(evaluate):
    res = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    np.testing.assert_allclose(res.cmc, [1 / 3, 2 / 3, 1, 1, 1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.ap, HAND_AP, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.inp, HAND_INP, rtol=0, atol=1e-15)
    assert res.mAP == pytest.approx((0.45 + 1 / 3 + 1) / 3, abs=1e-15)
    assert res.mINP == pytest.approx((0.4 + 1 / 3 + 1) / 3, abs=1e-15)
    assert res.num_valid_queries == 3 and res.num_queries == 4 and res.num_skipped_queries == 1
    assert res.rank1 == pytest.approx(1 / 3)
    assert "mAP 59.4%" in res.summary() and "(3/4 queries)" in res.summary()


@BOTH
def test_torch_inputs_are_accepted(evaluate):
    res = evaluate(torch.tensor(DIST), torch.tensor(Q_PIDS), torch.tensor(G_PIDS), torch.tensor(Q_CAMS), torch.tensor(G_CAMS), 5)
    assert res.mAP == pytest.approx((0.45 + 1 / 3 + 1) / 3)


@BOTH
def test_distractors_count_as_negatives_junk_does_not(evaluate):
    # qA alone. Its distractor g3 sits between its two true matches (ranks 2 and 5).
    one = dict(q_pids=Q_PIDS[:1], g_pids=G_PIDS, q_camids=Q_CAMS[:1], g_camids=G_CAMS)
    assert evaluate(DIST[:1], **one).mAP == pytest.approx(0.45)
    # Relabel the distractor as junk: it is dropped, kept list g1 (F) g2 (T) g5 (F) g6 (T):
    # matches at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4.
    g_junk = G_PIDS.copy()
    g_junk[3] = -1
    res = evaluate(DIST[:1], Q_PIDS[:1], g_junk, Q_CAMS[:1], G_CAMS)
    assert res.mAP == pytest.approx(0.5) and res.mINP == pytest.approx(0.5)
    # Relabel the junk g4 (closest of all, 0.05) as a distractor: it now counts as a false
    # match at rank 1, pushing the matches to ranks 3 and 6 -> AP = (1/3 + 2/6) / 2 = 1/3.
    g_dis = G_PIDS.copy()
    g_dis[4] = 0
    assert evaluate(DIST[:1], Q_PIDS[:1], g_dis, Q_CAMS[:1], G_CAMS).mAP == pytest.approx(1 / 3)


@BOTH
def test_same_id_same_camera_is_excluded_other_cameras_kept(evaluate):
    # qA's nearest real image is g0, the same person seen by the same camera: dropped.
    # Moving the query to camera 3 instead excludes g6 and keeps g0:
    # kept g0 (T, 0.10) g1 g2 (T) g3 g5 -> ranks 1 and 3: AP = (1 + 2/3) / 2.
    res = evaluate(DIST[:1], Q_PIDS[:1], G_PIDS, np.array([3]), G_CAMS)
    assert res.mAP == pytest.approx((1 + 2 / 3) / 2)
    assert res.cmc[0] == 1.0
    # Same pid in another camera is a true match; same camera but another pid is a negative.
    idx, flags = rank_gallery(DIST[0], 1, 1, G_PIDS, G_CAMS)
    assert idx.tolist() == [1, 2, 3, 5, 6] and flags.tolist() == [0, 1, 0, 0, 1]


@BOTH
def test_ties_are_broken_by_gallery_order(evaluate):
    # qB's true match g5 is tied with g2 and g3 at 0.20 and comes last of the three in the
    # gallery: rank 3 (AP 1/3). Put it first in the gallery and it is ranked first (AP 1).
    qB = dict(q_pids=Q_PIDS[1:2], q_camids=Q_CAMS[1:2])
    assert evaluate(DIST[1:2], g_pids=G_PIDS, g_camids=G_CAMS, **qB).mAP == pytest.approx(1 / 3)
    perm = np.array([5, 0, 1, 2, 3, 4, 6])  # g5 moves to the front
    res = evaluate(DIST[1:2, perm], g_pids=G_PIDS[perm], g_camids=G_CAMS[perm], **qB)
    assert res.mAP == pytest.approx(1.0) and res.cmc[0] == 1.0
    # between the other two tied items: still rank 2
    perm = np.array([0, 1, 2, 5, 3, 4, 6])
    assert evaluate(DIST[1:2, perm], g_pids=G_PIDS[perm], g_camids=G_CAMS[perm], **qB).mAP == pytest.approx(0.5)


@BOTH
def test_ties_with_excluded_items_do_not_count(evaluate):
    # A true match tied with an excluded (same-camera) item and a junk item that come
    # earlier in the gallery: both are dropped, so the match is rank 1.
    g_pids = np.array([5, -1, 5, 7])
    g_cams = np.array([1, 2, 2, 3])
    dist = np.array([[0.3, 0.3, 0.3, 0.9]])
    res = evaluate(dist, [5], g_pids, [1], g_cams)
    assert res.ap.tolist() == [1.0] and res.cmc[0] == 1.0


@BOTH
def test_all_queries_invalid_is_a_clear_error(evaluate):
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(DIST[2:3], Q_PIDS[2:3], G_PIDS, Q_CAMS[2:3], G_CAMS)
    # only same-camera images of the person: nothing left either
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate(np.array([[0.1, 0.2]]), [4], [4, 4], [1], [1, 1])


@BOTH
def test_max_rank_longer_than_the_gallery(evaluate):
    res = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=50)
    assert res.cmc.shape == (50,)
    np.testing.assert_allclose(res.cmc[:3], [1 / 3, 2 / 3, 1])
    assert np.all(res.cmc[2:] == 1.0)


@BOTH
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(distmat=np.zeros(7)), "distmat must be 2-D"),
        (dict(distmat=np.zeros((0, 7))), "empty"),
        (dict(q_pids=Q_PIDS[:3]), "q_pids has 3 entries"),
        (dict(g_pids=G_PIDS[:6]), "g_pids has 6 entries"),
        (dict(q_camids=Q_CAMS.reshape(2, 2)), "q_camids must be 1-D"),
        (dict(g_camids=G_CAMS[:5]), "g_camids has 5 entries"),
        (dict(distmat=np.where(DIST > 0.6, np.nan, DIST)), "NaN or infinite"),
        (dict(max_rank=0), "max_rank must be an integer from 1"),
        (dict(max_rank=10**9), r"to the gallery's size \(7\) or 50, got 1000000000"),
        (dict(g_pids=G_PIDS + 0.5), "integer ids"),
    ],
)
def test_bad_inputs_raise_value_error(evaluate, kwargs, message):
    args = dict(distmat=DIST, q_pids=Q_PIDS, g_pids=G_PIDS, q_camids=Q_CAMS, g_camids=G_CAMS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        evaluate(**args)


# --- the fast implementation equals the reference exactly --------------------------------------


def random_problem(seed: int, nq: int = 60, ng: int = 400, num_ids: int = 25, round_to: int | None = None, dtype=np.float64):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, nq)
    g_pids = rng.integers(-1, num_ids + 1, ng)  # includes junk (-1) and distractors (0)
    q_cams = rng.integers(1, 7, nq)
    g_cams = rng.integers(1, 7, ng)
    dist = rng.random((nq, ng)) - 0.3 * (q_pids[:, None] == g_pids[None, :])
    if round_to is not None:
        dist = np.round(dist, round_to)  # many ties
    return dist.astype(dtype), q_pids, g_pids, q_cams, g_cams


def assert_identical(a, b):
    assert np.array_equal(a.cmc, b.cmc)
    assert a.mAP == b.mAP and a.mINP == b.mINP
    assert a.num_valid_queries == b.num_valid_queries and a.num_queries == b.num_queries
    assert np.array_equal(a.ap, b.ap, equal_nan=True)
    assert np.array_equal(a.inp, b.inp, equal_nan=True)
    assert a.ap_rule == b.ap_rule


@pytest.mark.parametrize("ap", AP_RULES)
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("round_to", [None, 1, 2])
def test_fast_equals_reference_exactly(seed, round_to, ap):
    problem = random_problem(seed, round_to=round_to, num_ids=[3, 25, 80][seed % 3])
    ref = evaluate_rank_reference(*problem, max_rank=20, ap=ap)
    assert ref.ap_rule == ap
    for chunk_size in (1, 7, 1000):
        assert_identical(evaluate_rank(*problem, max_rank=20, ap=ap, chunk_size=chunk_size), ref)
    # the problem must exercise the protocol: some queries skipped, some not
    assert 0 < ref.num_valid_queries <= ref.num_queries


@pytest.mark.parametrize("seed", range(3))
def test_evaluate_features_gives_both_rules_from_one_ranking(seed):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(seed, round_to=1)
    rng = np.random.default_rng(seed)
    qf, gf = torch.from_numpy(rng.normal(size=(60, 5))).float(), torch.from_numpy(rng.normal(size=(400, 5))).float()
    ev = evaluate_features(Features(qf, q_pids, q_cams), Features(gf, g_pids, g_cams), max_rank=20)
    distmat = pairwise_distance(qf, gf)
    assert np.array_equal(ev.distances, distmat)
    for rule in AP_RULES:  # each rule exactly as its own evaluate_rank pass gives it
        assert_identical(getattr(ev, rule), evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20, ap=rule))
    assert ev.trapezoid.mAP < ev.step.mAP  # the rules really differ on this problem
    with pytest.raises(ValueError, match="labels=True"):
        evaluate_features(Features(qf, None, None), Features(gf, g_pids, g_cams))


def test_evaluate_runs_the_model_once_per_loader_in_eval_mode():
    torch.manual_seed(0)
    model = TinyNet().train()
    _, _, _, query = make_loader(n=9, seed=0)
    _, _, _, gallery = make_loader(n=30, seed=1)
    ev = evaluation.evaluate(model, query, gallery, max_rank=5)
    assert model.training and set(model.seen_training) == {False}
    q, g = extract_features(model, query), extract_features(model, gallery)
    assert torch.equal(ev.query.features, q.features) and torch.equal(ev.gallery.features, g.features)
    distmat = pairwise_distance(q.features, g.features)
    assert_identical(ev.step, evaluate_rank(distmat, q.pids, g.pids, q.camids, g.camids, max_rank=5))
    assert_identical(ev.trapezoid, evaluate_rank(distmat, q.pids, g.pids, q.camids, g.camids, max_rank=5, ap="trapezoid"))


@pytest.mark.parametrize("ap", AP_RULES)
def test_fast_equals_reference_float32_and_integer_distances(ap):
    problem = random_problem(11, round_to=2, dtype=np.float32)
    assert_identical(evaluate_rank(*problem, ap=ap), evaluate_rank_reference(*problem, ap=ap))
    integer = (np.round(problem[0] * 10).astype(np.int64),) + problem[1:]
    assert_identical(evaluate_rank(*integer, max_rank=5, ap=ap), evaluate_rank_reference(*integer, max_rank=5, ap=ap))


def torchreid_market1501(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's ``eval_market1501`` (re-stated), plus mINP as in the AGW code.

    torchreid drops junk when it parses the dataset, so the caller removes it beforehand.
    """
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, np.newaxis]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for q_idx in range(distmat.shape[0]):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        raw_cmc = matches[q_idx][~remove]
        if not np.any(raw_cmc):
            continue
        cmc = raw_cmc.cumsum()
        pos_max_idx = np.max(np.where(raw_cmc == 1))
        all_inp.append(cmc[pos_max_idx] / (pos_max_idx + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        tmp = np.asarray([x / (i + 1.0) for i, x in enumerate(raw_cmc.cumsum())]) * raw_cmc
        all_ap.append(tmp.sum() / raw_cmc.sum())
    return np.asarray(all_cmc, dtype=np.float32).sum(0) / len(all_cmc), np.mean(all_ap), np.mean(all_inp)


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_torchreid_convention(seed):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(seed, nq=50, ng=300)
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
    no_junk = g_pids != -1
    cmc, mAP, mINP = torchreid_market1501(dist[:, no_junk], q_pids, g_pids[no_junk], q_cams, g_cams[no_junk], 10)
    np.testing.assert_allclose(res.cmc, cmc, atol=1e-6)
    assert res.mAP == pytest.approx(mAP, abs=1e-12)
    assert res.mINP == pytest.approx(mINP, abs=1e-12)


# --- the two AP rules -------------------------------------------------------------------------
#
# For true matches i = 1..n at ranks r_i: step AP = mean of i / r_i; trapezoid AP (Market-1501's
# MATLAB compute_AP) = mean of (p_before + i / r_i) / 2, p_before = (i - 1) / (r_i - 1), 1 if r_i = 1.
# qA (matches at ranks 2 and 5): step (1/2 + 2/5) / 2 = 0.45;
#     trapezoid ((0/1 + 1/2) / 2 + (1/4 + 2/5) / 2) / 2 = (0.25 + 0.325) / 2 = 0.2875.
# qB (one match, rank 3): step 1/3; trapezoid (0/2 + 1/3) / 2 = 1/6.
# qD (one match, rank 1): both 1 (p_before = 1 before rank 1).
# trapezoid mAP = (0.2875 + 1/6 + 1) / 3 = 0.48472...; CMC and INP do not depend on the rule.
HAND_AP_TRAPEZOID = [0.2875, 1 / 6, math.nan, 1.0]


@BOTH
@pytest.mark.parametrize(
    "rule, expected, line",
    [("step", HAND_AP, "mAP 59.4% (step AP)"), ("trapezoid", HAND_AP_TRAPEZOID, "mAP 48.5% (trapezoid AP)")],
)
def test_ap_rules_on_the_hand_worked_example(evaluate, rule, expected, line):
    res = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ap=rule)
    np.testing.assert_allclose(res.ap, expected, rtol=0, atol=1e-15)
    assert res.mAP == pytest.approx(np.nanmean(expected), abs=1e-15)
    assert res.ap_rule == rule and res.summary().startswith(line)
    np.testing.assert_allclose(res.inp, HAND_INP, rtol=0, atol=1e-15)
    np.testing.assert_allclose(res.cmc, [1 / 3, 2 / 3, 1, 1, 1], rtol=0, atol=1e-15)


@BOTH
def test_the_default_ap_rule_is_step(evaluate):
    res = evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5)
    assert res.ap_rule == "step"
    assert_identical(res, evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, max_rank=5, ap="step"))


def ranked(labels: str) -> dict:
    """One query (pid 1, camera 1) and a gallery already in rank order (distances 1, 2, ...):
    T a true match (pid 1, camera 2), F a false one (pid 2), D a distractor (pid 0),
    J junk (pid -1) and S pid 1 seen by camera 1 (excluded)."""
    pid, cam = dict(T=1, F=2, D=0, J=-1, S=1), dict(T=2, F=2, D=3, J=2, S=1)
    return dict(distmat=np.arange(1.0, len(labels) + 1)[None, :], q_pids=[1], q_camids=[1],
                g_pids=np.array([pid[c] for c in labels]), g_camids=np.array([cam[c] for c in labels]))


@BOTH
@pytest.mark.parametrize(
    "labels, step, trapezoid",
    [
        ("T", 1.0, 1.0),  # one match at rank 1: p_before = 1
        ("FT", 1 / 2, 1 / 4),  # one match at rank r > 1: step 1/r, trapezoid (0 + 1/r) / 2
        ("FFT", 1 / 3, 1 / 6),
        ("FFFFFFT", 1 / 7, 1 / 14),
        ("TTTFF", 1.0, 1.0),  # all matches first: both 1
        ("JTSTJTDF", 1.0, 1.0),  # ... once junk and same-camera items are removed
        ("TFT", (1 + 2 / 3) / 2, ((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2),  # ranks 1, 3: 5/6 and 19/24
        ("FTFDT", 0.45, 0.2875),  # ranks 2, 5 (qA)
        ("JFSTFDT", 0.45, 0.2875),  # the same once J and S are removed
    ],
)
def test_ap_rules_by_hand(evaluate, labels, step, trapezoid):
    assert evaluate(**ranked(labels)).ap[0] == pytest.approx(step, abs=1e-15)
    assert evaluate(**ranked(labels), ap="trapezoid").ap[0] == pytest.approx(trapezoid, abs=1e-15)


def market_compute_ap(good_image: set, junk_image: set, index: list) -> float:
    """Market-1501's official MATLAB ``compute_AP`` (Zheng et al., ICCV 2015), transcribed line by
    line (the AP part): a walk down the ranked gallery ``index`` that skips junk images."""
    ngood = len(good_image)
    old_recall, old_precision, ap = 0.0, 1.0, 0.0
    intersect_size, j, good_now, njunk = 0, 0, 0, 0
    for n in range(len(index)):
        flag = 0
        if index[n] in good_image:
            flag = 1  # good image
            good_now += 1
        if index[n] in junk_image:
            njunk += 1
            continue  # junk image
        if flag == 1:
            intersect_size += 1
        recall = intersect_size / ngood
        precision = intersect_size / (j + 1)
        ap += (recall - old_recall) * ((old_precision + precision) / 2)
        old_recall, old_precision = recall, precision
        j += 1
        if good_now == ngood:
            return ap
    return ap


def market_matlab_aps(distmat, q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
    """The official evaluation loop: good = same id, another camera; junk = same id and camera, or pid -1.
    The gallery is sorted by distance with a stable sort, as MATLAB's ``sort``."""
    aps = np.full(len(q_pids), np.nan)
    for k in range(len(q_pids)):
        same_id = g_pids == q_pids[k]
        good = set(np.flatnonzero(same_id & (g_camids != q_camids[k])).tolist())
        junk = set(np.flatnonzero((same_id & (g_camids == q_camids[k])) | (g_pids == -1)).tolist())
        if good:  # (every Market query has one; reidlab skips a query without)
            aps[k] = market_compute_ap(good, junk, np.argsort(distmat[k], kind="stable").tolist())
    return aps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("round_to", [None, 2])
def test_trapezoid_is_market_matlab_compute_ap(seed, round_to):
    problem = random_problem(seed, nq=40, ng=300, num_ids=[3, 25][seed % 2], round_to=round_to)
    _, q_pids, g_pids, q_cams, g_cams = problem
    assert (g_pids == -1).any() and (g_pids == 0).any()  # junk and distractors
    assert ((g_pids[None, :] == q_pids[:, None]) & (g_cams[None, :] == q_cams[:, None])).any()  # same id, same camera
    expected = market_matlab_aps(*problem)
    for evaluate in (evaluate_rank, evaluate_rank_reference):
        res = evaluate(*problem, ap="trapezoid")
        np.testing.assert_allclose(res.ap, expected, rtol=0, atol=1e-12)  # nan (skipped) in the same places
        assert res.mAP == pytest.approx(np.nanmean(expected), abs=1e-12)
    assert not np.allclose(evaluate_rank(*problem).ap, expected, equal_nan=True)  # the step rule is not it


def ecn_average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """ECN's ``average_precision_score`` (reid/evaluation_metrics/ranking.py), re-stated without
    scikit-learn: ``auc(recall, precision)`` over ``precision_recall_curve(y_true, y_score)``,
    which has one point per distinct score, stops at full recall and ends at (recall 0, precision 1)."""
    order = np.argsort(y_score, kind="mergesort")[::-1]
    y_score, y_true = y_score[order], y_true[order]
    last_of_each_score = np.r_[np.flatnonzero(np.diff(y_score)), y_true.size - 1]
    tps = np.cumsum(y_true)[last_of_each_score]
    precision, recall = tps / (last_of_each_score + 1), tps / tps[-1]
    keep = slice(tps.searchsorted(tps[-1]), None, -1)
    precision, recall = np.r_[precision[keep], 1], np.r_[recall[keep], 0]
    return float(-np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2))  # trapezoids, recall decreasing


def ecn_aps(distmat, q_pids, g_pids, q_camids, g_camids) -> np.ndarray:
    """ECN's ``map_cmc`` (AP part): drop same-id-same-camera items, score = -distance. ECN drops junk
    when it parses the dataset, so the caller removes it beforehand."""
    aps = np.full(len(q_pids), np.nan)
    for i in range(len(q_pids)):
        valid = (g_pids != q_pids[i]) | (g_camids != q_camids[i])
        y_true = g_pids[valid] == q_pids[i]
        if y_true.any():
            aps[i] = ecn_average_precision(y_true, -distmat[i][valid])
    return aps


@pytest.mark.parametrize("seed", range(3))
def test_ecn_ap_is_the_trapezoid_rule_for_untied_distances(seed):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(seed, nq=40, ng=300, num_ids=[3, 25, 80][seed])
    assert len(np.unique(dist)) == dist.size  # no ties
    no_junk = g_pids != -1
    ecn = ecn_aps(dist[:, no_junk], q_pids, g_pids[no_junk], q_cams, g_cams[no_junk])
    res = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, ap="trapezoid")
    np.testing.assert_allclose(res.ap, ecn, rtol=0, atol=1e-12)
    assert not np.allclose(evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams).ap, ecn, equal_nan=True)


def test_ecn_ap_treats_a_tie_as_one_point():
    # a false and a true match tied at rank 1-2: ECN's curve goes from (0, 1) straight to
    # (recall 1, precision 1/2): area (1 + 1/2) / 2 = 0.75. We break the tie by gallery order.
    assert ecn_average_precision(np.array([False, True]), np.array([-0.5, -0.5])) == 0.75
    tie = dict(distmat=np.array([[0.5, 0.5]]), q_pids=[1], q_camids=[1], g_camids=[2, 2])
    assert evaluate_rank(**tie, g_pids=[2, 1], ap="trapezoid").ap[0] == 0.25  # match second: (0 + 1/2) / 2
    assert evaluate_rank(**tie, g_pids=[1, 2], ap="trapezoid").ap[0] == 1.0  # match first


@pytest.mark.parametrize("seed", range(4))
def test_trapezoid_never_exceeds_step(seed):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(seed, round_to=[None, 1][seed % 2], num_ids=[3, 25, 80, 80][seed])
    dist[::2] -= 0.7 * (q_pids[::2, None] == g_pids[None, :])  # even queries: all true matches come first
    problem = dist, q_pids, g_pids, q_cams, g_cams
    step, trap = evaluate_rank(*problem), evaluate_rank(*problem, ap="trapezoid")
    valid = ~np.isnan(step.ap)
    assert np.array_equal(valid, ~np.isnan(trap.ap))
    assert np.all(trap.ap[valid] <= step.ap[valid]) and trap.mAP < step.mAP
    # equal exactly when every true match comes before every false one, i.e. INP = |G| / R_hard = 1
    all_first = step.inp[valid] == 1
    np.testing.assert_array_equal(trap.ap[valid] == step.ap[valid], all_first)
    assert all_first.any() and not all_first.all()  # both cases occur


@BOTH
@pytest.mark.parametrize("bad", ["Step", "trapz", "", None, 1])
def test_unknown_ap_rule_raises(evaluate, bad):
    with pytest.raises(ValueError, match="ap must be 'step' or 'trapezoid'"):
        evaluate(DIST, Q_PIDS, G_PIDS, Q_CAMS, G_CAMS, ap=bad)


# --- distances --------------------------------------------------------------------------------


def test_pairwise_distance_matches_cdist_and_cosine_similarity():
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(13, 8, generator=g, dtype=torch.float64), torch.randn(29, 8, generator=g, dtype=torch.float64)
    d2 = pairwise_distance(qf, gf, chunk_size=4)
    assert isinstance(d2, np.ndarray) and d2.shape == (13, 29) and d2.dtype == np.float64
    np.testing.assert_allclose(d2, torch.cdist(qf, gf).numpy() ** 2, atol=1e-10)
    np.testing.assert_allclose(pairwise_distance(qf, gf, squared=False), torch.cdist(qf, gf).numpy(), atol=1e-10)
    cos = torch.nn.functional.cosine_similarity(qf[:, None, :], gf[None, :, :], dim=2).numpy()
    np.testing.assert_allclose(pairwise_distance(qf.numpy(), gf.numpy(), "cosine"), 1 - cos, atol=1e-10)
    # identical points: exactly 0, never a small negative number
    assert pairwise_distance(qf, qf).diagonal().min() >= 0


def test_cosine_and_euclidean_rank_alike_for_normalised_features():
    rng = np.random.default_rng(3)
    pids = np.repeat(np.arange(1, 11), 6)
    cams = np.tile(np.arange(1, 7), 10)
    feats = rng.normal(size=(10, 16))[pids - 1] + rng.normal(size=(60, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    q, g = np.arange(0, 60, 6), np.setdiff1d(np.arange(60), np.arange(0, 60, 6))
    de = pairwise_distance(feats[q], feats[g], "euclidean")
    dc = pairwise_distance(feats[q], feats[g], "cosine")
    np.testing.assert_allclose(de, 2 * dc, atol=1e-12)  # |a-b|^2 = 2 - 2cos for unit vectors
    re = evaluate_rank(de, pids[q], pids[g], cams[q], cams[g], 10)
    rc = evaluate_rank(dc, pids[q], pids[g], cams[q], cams[g], 10)
    np.testing.assert_allclose(re.cmc, rc.cmc)
    assert re.mAP == pytest.approx(rc.mAP, abs=1e-12)
    assert 0 < re.mAP < 1  # not a trivial problem


def test_pairwise_distance_bad_inputs():
    with pytest.raises(ValueError, match="metric must be"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")
    with pytest.raises(ValueError, match="dimension 3 but gallery features 4"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        pairwise_distance(np.zeros(3), np.zeros((2, 3)))


# --- feature extraction -----------------------------------------------------------------------


class TinyNet(nn.Module):
    """BN + dropout, so train and eval mode give different outputs."""

    def __init__(self, as_dict: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.as_dict = as_dict
        self.seen_training = []

    def forward(self, x):
        self.seen_training.append(self.training)
        f = self.drop(self.bn(self.conv(x)).relu().mean(dim=(2, 3)))
        if self.as_dict:
            return {"pool5": f, "tgt_feat": torch.nn.functional.normalize(f, dim=1), "logits": f[:, :2]}
        return f


def make_loader(n=10, batch=4, seed=0, with_labels=True):
    g = torch.Generator().manual_seed(seed)
    imgs = torch.randn(n, 3, 8, 6, generator=g)
    pids = torch.arange(n) % 3
    cams = torch.arange(n) % 2 + 1
    out = []
    for s in range(0, n, batch):
        out.append((imgs[s : s + batch], pids[s : s + batch], cams[s : s + batch]) if with_labels else imgs[s : s + batch])
    return imgs, pids, cams, out


@pytest.mark.parametrize("start_training", [True, False])
def test_extract_features_uses_eval_mode_and_restores_it(start_training):
    torch.manual_seed(0)
    model = TinyNet()
    model.bn.running_mean.fill_(0.3)  # make eval-mode BN differ from batch statistics
    model.train(start_training)
    imgs, pids, cams, loader = make_loader()
    feats, fp, fc = extract_features(model, loader)
    assert model.training is start_training
    assert set(model.seen_training) == {False}
    assert feats.dtype == torch.float32 and feats.shape == (10, 4) and not feats.requires_grad
    model.eval()
    with torch.no_grad():
        expected = model(imgs)
    torch.testing.assert_close(feats, expected)
    assert fp.tolist() == pids.tolist() and fc.tolist() == cams.tolist()
    assert fp.dtype == np.int64


def test_extract_features_flip_normalize_and_dict_output():
    torch.manual_seed(0)
    model = TinyNet(as_dict=True).eval()
    imgs, _, _, loader = make_loader()
    feats = extract_features(model, loader, output="pool5", flip=True, normalize=True).features
    with torch.no_grad():
        f = (model(imgs)["pool5"] + model(imgs.flip(3))["pool5"]) / 2
    torch.testing.assert_close(feats, torch.nn.functional.normalize(f, dim=1))
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    with pytest.raises(ValueError, match="pass output=<key>"):
        extract_features(model, loader)
    with pytest.raises(ValueError, match="'embed' is not among"):
        extract_features(model, loader, output="embed")


def test_extract_features_without_labels():
    model = TinyNet()
    imgs, _, _, loader = make_loader(with_labels=False)
    res = extract_features(model, loader)
    assert res.pids is None and res.camids is None and res.features.shape == (10, 4)
    # (images, memory index) batches: the index is not a person id, labels=False ignores it
    two = [(imgs[:5], torch.arange(5)), (imgs[5:], torch.arange(5, 10))]
    assert extract_features(model, two).pids is None
    _, _, _, labelled = make_loader()
    assert extract_features(model, labelled, labels=False).pids is None
    with pytest.raises(ValueError, match="labels=True"):
        extract_features(model, two, labels=True)
    with pytest.raises(ValueError, match="no batches"):
        extract_features(model, [])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        extract_features(model, [torch.zeros(3, 8, 6)])


# --- ranked lists -----------------------------------------------------------------------------


def test_rank_gallery_flags_and_excluded_items():
    idx, flags = rank_gallery(DIST[1], 2, 2, G_PIDS, G_CAMS)  # qB
    assert idx.tolist() == [2, 3, 5, 0, 6] and flags.tolist() == [0, 0, 1, 0, 0]
    idx, flags = rank_gallery(DIST[1], 2, 2, G_PIDS, G_CAMS, keep_excluded=True, k=4)
    assert idx.tolist() == [4, 2, 3, 5] and flags.tolist() == [-1, 0, 0, 1]


# --- re-ranking -------------------------------------------------------------------------------


def chains(seed: int):
    """Each identity is a chain of images drifting away from its first one (the query):
    the far end of one's own chain is farther than other identities' images, but each
    image is close to its chain neighbours, which k-reciprocal neighbours exploit."""
    rng = np.random.default_rng(seed)
    n_ids, per, dim = 20, 8, 16
    pids = np.repeat(np.arange(1, n_ids + 1), per)
    cams = np.tile(np.arange(per) % 4, n_ids)
    t = np.tile(np.arange(per), n_ids)
    direction = rng.normal(size=(n_ids, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    x = rng.normal(size=(n_ids, dim))[pids - 1] + t[:, None] * direction[pids - 1] + 0.3 * rng.normal(size=(len(pids), dim))
    q = np.arange(0, len(pids), per)
    g = np.setdiff1d(np.arange(len(pids)), q)
    return x[q], x[g], pids[q], pids[g], np.full(len(q), 9), cams[g]


@pytest.mark.parametrize("seed", range(2))
def test_re_ranking_improves_map_on_chains(seed):
    qf, gf, qp, gp, qc, gc = chains(seed)
    qg, qq, gg = pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)
    before = evaluate_rank(qg, qp, gp, qc, gc)
    rr = re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.3)
    assert rr.shape == qg.shape and np.all(np.isfinite(rr))
    after = evaluate_rank(rr, qp, gp, qc, gc)
    assert after.mAP > before.mAP + 0.2, (before.summary(), after.summary())


def test_re_ranking_lambda_one_is_the_original_ranking():
    qf, gf, qp, gp, qc, gc = chains(0)
    qg, qq, gg = pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf)
    rr = re_ranking(qg, qq, gg, lambda_value=1.0)
    row_max = np.maximum(qq.max(1), qg.max(1))[:, None]
    np.testing.assert_allclose(rr, qg / row_max)
    a, b = evaluate_rank(qg, qp, gp, qc, gc), evaluate_rank(rr, qp, gp, qc, gc)
    assert np.array_equal(a.ap, b.ap)
    # lambda = 0: pure Jaccard distance, in [0, 1]
    rj = re_ranking(qg, qq, gg, k1=6, k2=1, lambda_value=0.0)
    assert rj.min() >= 0 and rj.max() <= 1


def test_re_ranking_bad_inputs():
    qg, qq, gg = np.ones((2, 3)), np.zeros((2, 2)), np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"q_q_dist must have shape \(2, 2\)"):
        re_ranking(qg, np.zeros((3, 3)), gg)
    with pytest.raises(ValueError, match=r"g_g_dist must have shape \(3, 3\)"):
        re_ranking(qg, qq, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="non-negative"):
        re_ranking(-qg, qq, gg)
    with pytest.raises(ValueError, match="lambda_value"):
        re_ranking(qg, qq, gg, lambda_value=1.5)


def test_extract_features_output_selection_errors_and_tuples():
    imgs, _, _, loader = make_loader(with_labels=False)
    with pytest.raises(ValueError, match="single tensor"):
        extract_features(TinyNet(), loader, output="pool5")

    class TupleNet(TinyNet):
        def forward(self, x):
            f = super().forward(x)
            return f[:, :2], f

    model = TupleNet().eval()
    torch.testing.assert_close(extract_features(model, loader, output=1).features, model(imgs)[1].detach())
    with pytest.raises(ValueError, match="pass output=<index>"):
        extract_features(model, loader)


def test_k_reciprocal_neighbours_by_hand():
    from reidlab.rerank import _k_reciprocal

    # points on a line at 0, 1, 3, 10: nearest neighbours a->b, b->a, c->b, d->c
    x = np.array([0.0, 1.0, 3.0, 10.0])
    rank = np.argsort(np.abs(x[:, None] - x[None, :]), axis=1, kind="stable")
    assert sorted(_k_reciprocal(rank, 0, 1)) == [0, 1]  # a and b are each other's nearest
    assert sorted(_k_reciprocal(rank, 2, 1)) == [2]  # c's nearest is b, but b's is a
    assert sorted(_k_reciprocal(rank, 3, 1)) == [3]
    # k = 2: c's three nearest (itself included) are c, b, a; b's are b, a, c; a's are a, b, c
    assert sorted(_k_reciprocal(rank, 2, 2)) == [0, 1, 2]
    assert sorted(_k_reciprocal(rank, 3, 2)) == [3]  # d's are d, c, b, but d is nobody's


def test_re_ranking_small_problem_with_default_k():
    qf, gf, *_ = chains(1)
    qf, gf = qf[:2], gf[:3]  # N = 5 < k1 = 20: the neighbourhoods are clipped to N
    rr = re_ranking(pairwise_distance(qf, gf), pairwise_distance(qf, qf), pairwise_distance(gf, gf))
    assert rr.shape == (2, 3) and np.all(np.isfinite(rr)) and rr.min() >= 0


def test_extract_features_rejects_non_integer_labels():
    # ECN's test loader yields (img, fname, pid, camid): file names where pids are expected
    imgs, _, cams, _ = make_loader(n=4, batch=4)
    with pytest.raises(TypeError, match="pids in a batch must be integers"):
        extract_features(TinyNet(), [(imgs, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"], cams)])
