"""``otplug.stats`` against scipy and hand-computed values on known inputs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from otplug import stats as st
from otplug.errors import OtplugError


def _json(record) -> dict:
    d = record.to_dict()
    json.dumps(d, allow_nan=False)  # JSON-safe: no NaN, no numpy types
    return d


# ---------------------------------------------------------------------------------------------------------------------
# Wilson


def test_wilson_published_values_and_errors():
    # Newcombe (1998), method 3: 8/10 -> (0.4902, 0.9433); 0/10 -> (0, 0.2775)
    assert st.wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)
    assert st.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    lo95, hi95 = st.wilson_interval(52, 100)
    lo99, hi99 = st.wilson_interval(52, 100, confidence=0.99)
    assert lo99 < lo95 < 0.52 < hi95 < hi99
    with pytest.raises(ValueError, match="no episodes"):
        st.wilson_interval(0, 0)
    with pytest.raises(OtplugError, match=r"in \[0, n\]"):
        st.wilson_interval(11, 10)
    with pytest.raises(ValueError, match="confidence"):
        st.wilson_interval(1, 10, confidence=95)


# ---------------------------------------------------------------------------------------------------------------------
# seed means and paired differences


def test_seed_mean_is_the_t_interval_by_hand():
    r = st.seed_mean([0.1, 0.3, 0.5])
    mean = (0.1 + 0.3 + 0.5) / 3
    sd = math.sqrt(((0.1 - mean) ** 2 + (0.3 - mean) ** 2 + (0.5 - mean) ** 2) / 2)
    half = sps.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert (r.n, r.mean, r.sd) == (3, pytest.approx(mean), pytest.approx(sd))
    assert r.ci95 == pytest.approx((mean - half, mean + half))
    assert r.ci95[0] < 0  # not clipped: three seeds this spread do not pin the mean down
    assert r.per_seed == (0.1, 0.3, 0.5)
    one = _json(st.seed_mean([0.4]))
    assert one["sd"] is None and one["ci95"] is None and one["mean"] == 0.4
    flat = st.seed_mean([0.2, 0.2, 0.2])
    assert flat.sd == 0.0 and flat.ci95 == pytest.approx((0.2, 0.2), abs=1e-15)
    with pytest.raises(ValueError, match="no seeds"):
        st.seed_mean([])
    with pytest.raises(ValueError, match="finite"):
        st.seed_mean([0.1, float("nan")])


def test_paired_difference_hand_example():
    a = {0: 0.5, 1: 0.6, 2: 0.4, 7: 0.9}  # seed 7 only in a, seed 5 only in b: left out
    b = {2: 0.2, 0: 0.3, 1: 0.5, 5: 0.1}
    r = st.paired_difference(a, b)
    # differences 0.2, 0.1, 0.2: mean 1/6, sd = 0.1/sqrt(3), se = 0.1/3, t = 5 on 2 df
    se = 0.1 / 3
    assert r.seeds == (0, 1, 2) and r.differences == pytest.approx((0.2, 0.1, 0.2))
    assert r.mean == pytest.approx(1 / 6) and r.sd == pytest.approx(0.1 / math.sqrt(3))
    half = sps.t.ppf(0.975, 2) * se
    assert r.ci95 == pytest.approx((1 / 6 - half, 1 / 6 + half))
    assert r.p_value == pytest.approx(2 * sps.t.sf(5.0, 2))
    assert r.separated and r.mdd80 == pytest.approx(st.detectable_difference(r.sd, 3))
    # the same mean with a larger spread is not separated
    loose = st.paired_difference({0: 0.5, 1: 0.7, 2: 0.3}, {0: 0.3, 1: 0.2, 2: 0.5})
    assert loose.ci95[0] < 0 < loose.ci95[1] and not loose.separated and loose.p_value > 0.05
    d = _json(st.paired_difference({0: 0.5, 1: 0.2}, {0: 0.4, 3: 0.1}))  # one common seed: no interval
    assert d["n"] == 1 and d["ci95"] is None and d["separated"] is False and d["mdd80"] is None
    with pytest.raises(ValueError, match="no training seed in common"):
        st.paired_difference({0: 0.5}, {1: 0.5})


def test_gap_is_the_paired_sim_minus_real():
    sim, real = {0: 0.8, 1: 0.9, 2: 0.85}, {0: 0.5, 1: 0.7, 2: 0.5}
    g = st.gap(sim, real)
    assert g == st.paired_difference(sim, real)
    assert g.mean == pytest.approx((0.3 + 0.2 + 0.35) / 3) and g.separated


# ---------------------------------------------------------------------------------------------------------------------
# power


def test_power_matches_a_simulated_paired_t_test():
    sd, n = 0.19, 10
    delta = st.detectable_difference(sd, n)
    assert st.paired_power(delta, sd, n) == pytest.approx(0.8, abs=1e-9)
    rng = np.random.default_rng(1)
    d = rng.normal(delta, sd, size=(40_000, n))
    tstat = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert np.mean(np.abs(tstat) > sps.t.ppf(0.975, n - 1)) == pytest.approx(0.8, abs=0.01)


def test_detectable_difference_round_trips_with_seeds_for_difference():
    for sd in (0.05, 0.19, 0.3):
        for n in (2, 3, 6, 10, 25):
            mdd = st.detectable_difference(sd, n)
            assert st.seeds_for_difference(sd, mdd * (1 + 1e-6)) == n
            assert st.seeds_for_difference(sd, mdd * (1 - 1e-3)) == n + 1
            # the t test needs more than the normal approximation (z_0.975 + z_0.8) sd / sqrt(n)
            assert mdd > (sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * sd / math.sqrt(n)
    with pytest.raises(ValueError, match="n >= 2"):
        st.detectable_difference(0.19, 1)


def test_the_spec_power_numbers():
    # SPEC §8.1: paired sd 0.19 -> 10 seeds detect ~+0.19; +0.10 needs ~40 (a cluster grid)
    assert st.detectable_difference(0.19, 10) == pytest.approx(0.19, abs=0.01)
    assert st.seeds_for_difference(0.19, 0.19) == 10
    n = st.seeds_for_difference(0.19, 0.10)
    assert 25 <= n <= 40  # 31 with the noncentral t: "~40" in SPEC is a rounding up
    assert st.detectable_difference(0.19, n) <= 0.10 < st.detectable_difference(0.19, n - 1)


# ---------------------------------------------------------------------------------------------------------------------
# hierarchical bootstrap


RATES = [0.385, 0.255, 0.13, 0.5, 0.31, 0.22]


def test_hierarchical_bootstrap_without_episode_noise_is_the_seed_bootstrap():
    big = 10**9
    counts = {s: (round(p * big), big) for s, p in enumerate(RATES)}
    h = st.hierarchical_bootstrap(counts, n_boot=20_000, seed=3)
    ref = sps.bootstrap((np.array(RATES),), np.mean, n_resamples=20_000, method="percentile",
                        rng=np.random.default_rng(4)).confidence_interval
    assert h.estimate == pytest.approx(np.mean(RATES))
    assert h.ci95 == pytest.approx((ref.low, ref.high), abs=0.01)
    assert h.se == pytest.approx(np.std(RATES, ddof=0) / math.sqrt(len(RATES)), rel=0.05)
    # with 20 episodes per seed the episode noise widens the interval
    few = st.hierarchical_bootstrap({s: (round(p * 20), 20) for s, p in enumerate(RATES)}, n_boot=20_000, seed=3)
    assert few.ci95[1] - few.ci95[0] > 1.15 * (h.ci95[1] - h.ci95[0])


def test_hierarchical_bootstrap_with_one_seed_is_the_binomial():
    h = st.hierarchical_bootstrap({7: (30, 100)}, n_boot=40_000, seed=0)
    lo, hi = sps.binom.ppf([0.025, 0.975], 100, 0.3) / 100
    assert h.estimate == 0.3 and h.n_seeds == 1 and h.seeds == (7,)
    assert h.ci95 == pytest.approx((lo, hi), abs=0.0101)
    assert h.se == pytest.approx(math.sqrt(0.3 * 0.7 / 100), rel=0.03)


def test_hierarchical_bootstrap_pairs_and_is_deterministic():
    big = 10**9
    a = {s: (round(p * big), big) for s, p in enumerate(RATES)}
    b = {s: (round((p - 0.1) * big), big) for s, p in enumerate(RATES)}
    b[99] = (1, 2)  # not in a: left out
    d = st.hierarchical_bootstrap(a, b, n_boot=5000, seed=1)
    # the same seeds are drawn for a and b: the seed-to-seed spread cancels in the difference
    assert d.paired and d.n_seeds == len(RATES) and d.estimate == pytest.approx(0.1)
    assert d.ci95 == pytest.approx((0.1, 0.1), abs=1e-3)
    counts = {s: (round(p * 200), 200) for s, p in enumerate(RATES)}
    assert st.hierarchical_bootstrap(counts, n_boot=500, seed=5) == st.hierarchical_bootstrap(counts, n_boot=500,
                                                                                              seed=5)
    assert st.hierarchical_bootstrap(counts, n_boot=500, seed=5) != st.hierarchical_bootstrap(counts, n_boot=500,
                                                                                              seed=6)
    _json(d)
    with pytest.raises(ValueError, match="episodes > 0"):
        st.hierarchical_bootstrap({0: (1, 0)})
    with pytest.raises(ValueError, match="n_boot"):
        st.hierarchical_bootstrap(counts, n_boot=0)


# ---------------------------------------------------------------------------------------------------------------------
# gap closed


def test_gap_closed_hand_example():
    seeds = (0, 1, 2)
    gc, gm = (0.3, 0.2, 0.25), (0.1, 0.1, 0.05)  # co-training's and the method's per-seed sim - real gaps
    real_c = {0: 0.5, 1: 0.6, 2: 0.55}
    sim_c = {s: real_c[s] + g for s, g in zip(seeds, gc)}
    real_m = {0: 0.6, 1: 0.65, 2: 0.7}
    sim_m = {s: real_m[s] + g for s, g in zip(seeds, gm)}
    r = st.gap_closed(sim_m, real_m, sim_c, real_c, n_boot=20_000, seed=0)
    assert r.gap_cotrain == pytest.approx(0.25) and r.gap_method == pytest.approx(0.25 / 3)
    assert r.fraction == pytest.approx((1 / 6) / 0.25)  # = 1 - mean(gm) / mean(gc) = 2/3
    assert r.closed.mean == pytest.approx(1 / 6)
    assert r.closed.ci95 == pytest.approx(st.paired_difference(dict(zip(seeds, gc)), dict(zip(seeds, gm))).ci95)
    # every resample's ratio lies between the per-seed ratios 0.5 and 0.8 (mediant inequality), and each of the
    # two extremes is one resample in 27 (3.7 % > 2.5 %): the percentile interval is exactly (0.5, 0.8)
    assert r.fraction_ci95 == pytest.approx((0.5, 0.8))
    assert _json(r)["closed"]["n"] == 3


def test_gap_closed_without_a_gap_to_close():
    z = {0: 0.5, 1: 0.5, 2: 0.5}
    r = st.gap_closed(z, z, {0: 0.5, 1: 0.4, 2: 0.5}, {0: 0.5, 1: 0.5, 2: 0.6})
    assert r.fraction is None and r.fraction_ci95 is None and "no sim - real gap" in r.fraction_reason
    # a positive mean gap that the seeds do not bound away from 0: a fraction but no interval
    r = st.gap_closed(z, z, {0: 0.8, 1: 0.2, 2: 0.5}, {0: 0.5, 1: 0.45, 2: 0.52}, n_boot=4000)
    assert r.fraction == pytest.approx(1.0) and r.fraction_ci95 is None and "not bounded" in r.fraction_reason
    d = _json(r)
    assert d["fraction_ci95"] is None


# ---------------------------------------------------------------------------------------------------------------------
# rank correlation


def test_rank_correlation_monotone_and_constant():
    x = [0.1, 0.4, 0.2, 0.9, 0.5, 0.7]
    r = st.rank_correlation(x, np.exp(x))
    assert r.rho == pytest.approx(1.0) and r.ci95 == pytest.approx((1.0, 1.0)) and r.reason is None
    assert r.p_value == pytest.approx(sps.spearmanr(x, np.exp(x)).pvalue)
    c = _json(st.rank_correlation(x, [0.3] * 6))
    assert c["rho"] is None and c["ci95"] is None and "constant" in c["reason"]
    assert "at least 3" in st.rank_correlation([1.0, 2.0], [2.0, 1.0]).reason
    with pytest.raises(ValueError, match="pair up"):
        st.rank_correlation([1, 2, 3], [1, 2])


def test_rank_correlation_matches_spearmanr_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 12).astype(float)  # ties on purpose
    y = x + rng.normal(0, 1.5, 12)
    r = st.rank_correlation(x, y, seed=2)
    ref = sps.spearmanr(x, y)
    assert r.rho == pytest.approx(ref.statistic) and r.p_value == pytest.approx(ref.pvalue) and r.n == 12
    assert r.ci95[0] < r.rho < r.ci95[1]
    assert r == st.rank_correlation(x, y, seed=2) and r != st.rank_correlation(x, y, seed=3)
    # the vectorised rho of each resample is scipy's
    idx = rng.integers(0, 12, size=(20, 12))
    rows = st._spearman_rows(x[idx], y[idx])
    for i in range(20):
        assert rows[i] == pytest.approx(sps.spearmanr(x[idx[i]], y[idx[i]]).statistic, nan_ok=True)


# ---------------------------------------------------------------------------------------------------------------------
# PCA and retrieval


def test_pca_2d_is_the_svd_projection_up_to_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    xy, share = st.pca_2d(x)
    c = x - x.mean(0)
    _u, s, vt = np.linalg.svd(c, full_matrices=False)
    ref = c @ vt[:2].T
    signs = np.sign((xy * ref).sum(0))
    assert np.allclose(xy, ref * signs) and share == pytest.approx((s[:2] ** 2) / (s**2).sum())
    xy1, share1 = st.pca_2d(x[:, :1])  # one feature: the second axis is padded
    assert xy1.shape == (40, 2) and np.all(xy1[:, 1] == 0) and share1 == pytest.approx((1.0, 0.0))
    xy0, share0 = st.pca_2d(np.ones((5, 3)))
    assert np.all(xy0 == 0) and np.all(share0 == 0)


def test_retrieval_at_1():
    # the old homes re-export these (otplug.diagnostics, otplug.report.figures): checked in test_diagnostics.py and
    # test_report.py, which pay for importing torch anyway
    x = np.arange(20.0).reshape(10, 2) ** 1.5
    y = x.copy()
    y[[0, 1]] = y[[1, 0]]
    assert st.retrieval_at_1(x, y) == pytest.approx(0.8) and st.retrieval_at_1(x, x, "cosine") == 1.0
    bad = x.copy()
    bad[0, 0] = np.inf
    assert math.isnan(st.retrieval_at_1(bad, x))
    with pytest.raises(OtplugError, match="same shape"):
        st.retrieval_at_1(x, x[:5])
    with pytest.raises(OtplugError, match="metric"):
        st.retrieval_at_1(x, x, "manhattan")


def test_retrieval_and_partner_rank_share_one_tie_rule():
    """Ties are broken at random, in expectation, whatever the row order: collapsed embeddings score chance
    (retrieval 1/n, rank (n-1)/2); a partner nearest together with one duplicate counts 1/2 and half a rank."""
    x = np.arange(20.0).reshape(10, 2) ** 1.5
    assert st.retrieval_at_1(x, x) == 1.0 and st.partner_rank(x, x) == 0.0
    y = x.copy()
    y[[0, 1]] = y[[1, 0]]  # rows 0 and 1 each have the other's partner nearest
    assert st.partner_rank(x, y) == pytest.approx(0.2) and st.partner_rank(x, y, "cosine") >= 0.2 - 1e-12
    flat = np.ones((8, 3))
    for metric in ("euclidean", "cosine"):
        assert st.retrieval_at_1(flat, flat, metric) == pytest.approx(1 / 8)
        assert st.partner_rank(flat, flat, metric) == pytest.approx(7 / 2)
    dup = x.copy()
    dup[5] = dup[4]  # sim rows 4 and 5 identical: real rows 4 and 5 find their partner tied with the other
    for order in (np.arange(10), np.arange(10)[::-1]):
        assert st.retrieval_at_1(dup[order], x[order]) == pytest.approx(0.9)  # 8 rows + 1/2 + 1/2
        assert st.partner_rank(dup[order], x[order]) == pytest.approx((0.5 + 0.5) / 10)
    bad = x.copy()
    bad[0, 0] = np.nan
    assert math.isnan(st.partner_rank(bad, x))
    with pytest.raises(OtplugError, match="partner_rank needs at least 2 pairs"):
        st.partner_rank(x[:1], x[:1])


# ---------------------------------------------------------------------------------------------------------------------
# records


def test_records_are_frozen_and_json_safe():
    r = st.paired_difference({0: 0.5, 1: 0.5}, {0: 0.5, 1: 0.5})
    assert r.ci95 == (0.0, 0.0) and r.p_value is None and not r.separated
    d = _json(r)
    assert d["seeds"] == [0, 1] and isinstance(d["ci95"], list)
    with pytest.raises(AttributeError):
        r.mean = 1.0  # type: ignore[misc]
    assert list(itertools.chain(_json(st.seed_mean([0.1, 0.2])).keys())) == ["n", "mean", "sd", "ci95", "per_seed",
                                                                              "confidence"]
