"""The statistics of the closed-loop benchmark, in one place: the training seed is the unit (SPEC §8.1).

Training randomness dominates episode noise here, so methods are compared by their per-seed success rates:

* :func:`seed_mean` -- one method x domain x region over seeds: ``mean ± t_{1-α/2, n-1} · sd / √n``;
* :func:`paired_difference` -- method a − method b paired by training seed (the same seed = the same BC rows):
  the t interval of the per-seed differences, the two-sided paired t p-value, "separated" (the interval
  excludes 0) and the power statement ``mdd80`` (:func:`detectable_difference`);
* :func:`hierarchical_bootstrap` -- the check of the two above: resample seeds, then episodes within each seed;
* :func:`gap` / :func:`gap_closed` -- the sim − real gap of a method, and how much of co-training's gap another
  method closes (paired per seed);
* :func:`rank_correlation` -- Spearman's rho between an offline signal and success over runs, with a pairs
  bootstrap interval;
* :func:`wilson_interval` -- one policy's episode noise only (never the basis of "separated");
* :func:`pca_2d`, :func:`retrieval_at_1` (and :func:`partner_rank`, with its tie rule) -- the embedding summaries
  the report, the study, the training diagnostics and the demo's report share.

Every quantile comes from scipy (``scipy.stats.t``, ``nct``, ``binomtest``, ``spearmanr``); the bootstraps are
vectorised numpy with their own ``numpy.random.default_rng(seed)`` (deterministic, no global state). scipy and
scikit-learn are imported inside the functions that need them, so ``import otplug.stats`` (and the training
diagnostics, which re-export :func:`retrieval_at_1`) needs only numpy. No torch: tensors are accepted by duck
typing (``.detach()``).

Results are frozen attrs records; ``to_dict()`` gives JSON-safe values (tuples as lists, NaN/inf as ``None``).
The design follows rliable (Agarwal et al., "Deep RL at the edge of the statistical precipice", NeurIPS 2021):
interval estimates over runs, bootstrap over runs, the run and not the episode as the unit.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import attrs
import numpy as np

from otplug.errors import OtplugError

__all__ = [
    "GapClosed",
    "HierarchicalBootstrap",
    "PairedDifference",
    "RankCorrelation",
    "SeedMean",
    "StatsError",
    "detectable_difference",
    "gap",
    "gap_closed",
    "hierarchical_bootstrap",
    "paired_difference",
    "paired_power",
    "partner_rank",
    "pca_2d",
    "rank_correlation",
    "retrieval_at_1",
    "seed_mean",
    "seeds_for_difference",
    "wilson_interval",
]

Interval = tuple[float, float]


class StatsError(OtplugError, ValueError):
    """Bad input to a statistic (no episodes, no common seeds, a confidence outside (0, 1), ...)."""


# ---------------------------------------------------------------------------------------------------------------------
# records


def _json_safe(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    return v


class _Record:
    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-safe values: tuples become lists, NaN and inf become ``None``."""
        return _json_safe(attrs.asdict(self, recurse=False))


@attrs.frozen(kw_only=True)
class SeedMean(_Record):
    """Mean over training seeds of one success rate, with the t interval on ``n - 1`` degrees of freedom."""

    n: int
    mean: float
    sd: float | None  # sample sd (ddof = 1); None for n < 2
    ci95: Interval | None  # None for n < 2; not clipped to [0, 1] (a bound outside says: too few seeds)
    per_seed: tuple[float, ...]
    confidence: float = 0.95


@attrs.frozen(kw_only=True)
class PairedDifference(_Record):
    """a − b paired by training seed: the t interval of the per-seed differences and what it can detect."""

    n: int
    mean: float
    sd: float | None  # sd of the per-seed differences; None for n < 2
    ci95: Interval | None  # None for n < 2
    p_value: float | None  # two-sided paired t; None for n < 2 or when every difference is the same
    separated: bool  # the interval excludes 0 (False for n < 2)
    mdd80: float | None  # smallest true difference detected with 80 % power at this n and sd (alpha 0.05)
    seeds: tuple[Hashable, ...]
    differences: tuple[float, ...]
    confidence: float = 0.95


@attrs.frozen(kw_only=True)
class HierarchicalBootstrap(_Record):
    """Seeds, then episodes, resampled: the mean over seeds of a's rate (or of a − b) with a percentile interval."""

    estimate: float  # the observed mean over seeds of the per-seed rate (or of the per-seed difference)
    ci95: Interval
    se: float  # sd of the bootstrap distribution
    n_seeds: int
    n_boot: int
    paired: bool
    seeds: tuple[Hashable, ...]
    confidence: float = 0.95


@attrs.frozen(kw_only=True)
class GapClosed(_Record):
    """How much of co-training's sim − real gap a method closes, paired per seed."""

    n: int
    gap_cotrain: float  # mean over seeds of sim − real of co-training
    gap_method: float  # the same for the method
    closed: PairedDifference  # per seed gap_cotrain − gap_method, with its t interval
    fraction: float | None  # mean(gap_c − gap_m) / mean(gap_c); None when mean(gap_c) <= 0
    fraction_ci95: Interval | None  # paired seed bootstrap, percentile; None with fraction_reason
    fraction_reason: str | None
    seeds: tuple[Hashable, ...]
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        d = _json_safe({k: v for k, v in attrs.asdict(self, recurse=False).items() if k != "closed"})
        d["closed"] = self.closed.to_dict()
        return d


@attrs.frozen(kw_only=True)
class RankCorrelation(_Record):
    """Spearman's rho over runs with a bootstrap (pairs resampled) percentile interval."""

    rho: float | None  # None with ``reason`` (constant input, fewer than 3 runs)
    ci95: Interval | None
    p_value: float | None  # scipy.stats.spearmanr's two-sided p-value
    n: int
    reason: str | None = None
    confidence: float = 0.95


# ---------------------------------------------------------------------------------------------------------------------
# helpers


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise StatsError(f"confidence must be in (0, 1), got {confidence!r}")
    return c


def _check_n_boot(n_boot: int, what: str) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise StatsError(f"{what}: n_boot must be a whole number >= 1, got {n_boot!r}")


def _finite(values: Sequence[float], what: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(a).all():
        raise StatsError(f"{what}: every value must be finite, got {a.tolist()}")
    return a


def _common(*maps: Mapping[Hashable, Any]) -> list[Hashable]:
    """The keys (training seeds) present in every mapping, in the first mapping's order."""
    return [k for k in maps[0] if all(k in m for m in maps[1:])]


def _sd(a: np.ndarray) -> float:
    """Sample sd (ddof = 1); rounding noise (below 1e-12 of the values' scale) is 0, so equal values give 0."""
    sd = float(a.std(ddof=1))
    return 0.0 if sd <= 1e-12 * max(1.0, float(np.abs(a).max())) else sd


def _t_interval(mean: float, sd: float, n: int, confidence: float) -> Interval:
    """``mean ± t_{(1+c)/2, n-1} · sd / √n`` (scipy.stats.t); the point ``(mean, mean)`` when ``sd == 0``."""
    from scipy.stats import t

    if sd == 0.0:
        return (mean, mean)
    lo, hi = t.interval(confidence, n - 1, loc=mean, scale=sd / math.sqrt(n))
    return (float(lo), float(hi))


def _percentile(samples: np.ndarray, confidence: float) -> Interval:
    alpha = 1.0 - confidence
    lo, hi = np.quantile(samples, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (float(lo), float(hi))


# ---------------------------------------------------------------------------------------------------------------------
# one policy, one seed, many seeds


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval of ``successes`` out of ``n`` episodes (scipy ``binomtest(...).proportion_ci``):

    ``(p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``, ``z = Φ⁻¹((1+c)/2)``.

    One policy's episode noise only: pooling seeds into one count ignores the seed-to-seed spread (§8.1).
    ``n = 0`` raises :class:`StatsError` (a ``ValueError``): no episodes, no interval.
    """
    from scipy.stats import binomtest

    c = _check_confidence(confidence)
    k, m = int(successes), int(n)
    if k != successes or m != n:
        raise StatsError(f"wilson_interval: successes and n must be integers, got {successes!r} and {n!r}")
    if m <= 0:
        raise StatsError(f"wilson_interval: no episodes (n = {n}); an interval needs at least one")
    if not 0 <= k <= m:
        raise StatsError(f"wilson_interval: successes must be in [0, n], got {successes} of {n}")
    ci = binomtest(k, m).proportion_ci(confidence_level=c, method="wilson")
    return (float(ci.low), float(ci.high))


def seed_mean(rates: Sequence[float], confidence: float = 0.95) -> SeedMean:
    """Mean over training seeds of a success rate with the t interval ``mean ± t_{(1+c)/2, n−1} · sd/√n``
    (``sd`` with ddof = 1). ``sd`` and ``ci95`` are ``None`` for a single seed; no seed raises."""
    c = _check_confidence(confidence)
    a = _finite(rates, "seed_mean")
    n = a.size
    if n == 0:
        raise StatsError("seed_mean: no seeds")
    mean = float(a.mean())
    if n < 2:
        return SeedMean(n=n, mean=mean, sd=None, ci95=None, per_seed=tuple(a.tolist()), confidence=c)
    sd = _sd(a)
    return SeedMean(n=n, mean=mean, sd=sd, ci95=_t_interval(mean, sd, n, c), per_seed=tuple(a.tolist()),
                    confidence=c)


# ---------------------------------------------------------------------------------------------------------------------
# power of the paired t test


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test at level ``alpha`` with ``n`` pairs when the true mean difference is
    ``delta`` and the sd of the differences ``sd``: with ``df = n − 1``, ``t* = t_{1−α/2, df}`` and the
    noncentrality ``λ = delta·√n / sd``, ``P(T > t*) + P(T < −t*)`` for ``T ~ nct(df, λ)``."""
    from scipy.stats import nct, t

    if n < 2:
        raise StatsError(f"paired_power: the paired t test needs n >= 2 pairs, got {n}")
    if sd <= 0:
        raise StatsError(f"paired_power: sd must be > 0, got {sd}")
    df = n - 1
    crit = t.ppf(1.0 - alpha / 2.0, df)
    lam = abs(delta) * math.sqrt(n) / sd
    # P(T < -t*) for nct(df, lam) is P(T > t*) for nct(df, -lam): scipy's cdf returns NaN far in the tail at
    # df = 1 (lam ~ 80), its sf does not; a NaN there is a tail below 1e-16 and counts as 0
    minor = float(nct.sf(crit, df, -lam))
    return float(min(1.0, nct.sf(crit, df, lam) + (minor if math.isfinite(minor) else 0.0)))


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true mean difference that the two-sided paired t test (level ``alpha``) detects with
    probability ``power`` from ``n`` paired seeds whose differences have sd ``sd``: the root in ``delta`` of
    ``paired_power(delta, sd, n, alpha) = power`` (scipy ``brentq``). ``0`` when ``sd == 0``."""
    from scipy.optimize import brentq

    if n < 2:
        raise StatsError(f"detectable_difference: needs n >= 2 seeds, got {n}")
    if not 0.0 < power < 1.0 or not 0.0 < alpha < 1.0:
        raise StatsError(f"detectable_difference: power and alpha must be in (0, 1), got {power}, {alpha}")
    if sd == 0:
        return 0.0
    if paired_power(0.0, sd, n, alpha) >= power:
        return 0.0
    hi = sd
    while paired_power(hi, sd, n, alpha) < power:
        hi *= 2.0
    return float(brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, hi, xtol=1e-12, rtol=1e-12))


def seeds_for_difference(sd: float, delta: float, power: float = 0.8, alpha: float = 0.05,
                         max_n: int = 100_000) -> int:
    """The smallest number of paired seeds ``n >= 2`` at which the two-sided paired t test (level ``alpha``)
    detects a true mean difference ``delta`` with probability at least ``power`` (:func:`paired_power`)."""
    if delta == 0 or sd <= 0:
        raise StatsError(f"seeds_for_difference: needs delta != 0 and sd > 0, got delta {delta}, sd {sd}")
    lo, hi = 2, 2
    while paired_power(delta, sd, hi, alpha) < power:  # power grows with n: double, then bisect
        lo, hi = hi + 1, hi * 2
        if hi > max_n:
            raise StatsError(f"seeds_for_difference: more than {max_n} seeds to detect {delta} with sd {sd}")
    while lo < hi:
        mid = (lo + hi) // 2
        if paired_power(delta, sd, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid + 1
    return hi


# ---------------------------------------------------------------------------------------------------------------------
# comparisons paired by seed


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                      confidence: float = 0.95) -> PairedDifference:
    """Method a − method b, paired by training seed (only the seeds in both, in ``a``'s order).

    With ``d_s = a_s − b_s`` over ``n`` seeds: ``mean ± t_{(1+c)/2, n−1} · sd(d)/√n``; ``p_value`` from the
    two-sided paired t test (``scipy.stats.ttest_rel``); ``separated`` when the interval excludes 0; ``mdd80``
    = :func:`detectable_difference` ``(sd(d), n)`` (80 % power, alpha 0.05) -- the power statement of §8.1.

    No common seed raises :class:`StatsError`. With one common seed there is no interval: ``sd``, ``ci95``,
    ``p_value`` and ``mdd80`` are ``None`` and ``separated`` is ``False``. When every difference is the same
    (``sd == 0``) the interval is the point ``(mean, mean)`` and ``p_value`` is ``None``.
    """
    from scipy.stats import ttest_rel

    c = _check_confidence(confidence)
    seeds = _common(a, b)
    if not seeds:
        raise StatsError(f"paired_difference: no training seed in common (a: {list(a)}, b: {list(b)})")
    av = _finite([a[s] for s in seeds], "paired_difference a")
    bv = _finite([b[s] for s in seeds], "paired_difference b")
    d = av - bv
    n, mean = d.size, float(d.mean())
    if n < 2:
        return PairedDifference(n=n, mean=mean, sd=None, ci95=None, p_value=None, separated=False, mdd80=None,
                                seeds=tuple(seeds), differences=tuple(d.tolist()), confidence=c)
    sd = _sd(d)
    lo, hi = _t_interval(mean, sd, n, c)
    p = None if sd == 0.0 else float(ttest_rel(av, bv).pvalue)
    return PairedDifference(n=n, mean=mean, sd=sd, ci95=(lo, hi), p_value=p, separated=bool(lo > 0 or hi < 0),
                            mdd80=detectable_difference(sd, n), seeds=tuple(seeds), differences=tuple(d.tolist()),
                            confidence=c)


def _counts(counts: Mapping[Hashable, tuple[int, int]], seeds: list[Hashable], what: str) -> tuple[np.ndarray, ...]:
    k = np.array([counts[s][0] for s in seeds], dtype=np.int64)
    m = np.array([counts[s][1] for s in seeds], dtype=np.int64)
    if (m <= 0).any() or (k < 0).any() or (k > m).any():
        raise StatsError(f"{what}: every seed needs episodes > 0 and 0 <= successes <= episodes")
    return k, m


def hierarchical_bootstrap(a_counts: Mapping[Hashable, tuple[int, int]],
                           b_counts: Mapping[Hashable, tuple[int, int]] | None = None, n_boot: int = 10_000,
                           seed: int = 0, confidence: float = 0.95) -> HierarchicalBootstrap:
    """Two-level bootstrap of the mean over seeds of a success rate (or of the paired difference a − b).

    ``*_counts``: training seed -> (successes, episodes). Each of ``n_boot`` resamples draws ``S`` training seeds
    with replacement (the same draws for a and b: paired, seeds in both), then, for each drawn seed ``s``, its
    successes again as ``Binomial(episodes_s, successes_s / episodes_s)``; the statistic is the unweighted mean
    over the drawn seeds of ``successes*/episodes`` (minus b's). Interval: the percentiles ``(1−c)/2`` and
    ``(1+c)/2``. ``estimate`` is the observed statistic. Deterministic for a given ``seed``.
    """
    c = _check_confidence(confidence)
    _check_n_boot(n_boot, "hierarchical_bootstrap")
    seeds = _common(a_counts, b_counts) if b_counts is not None else list(a_counts)
    if not seeds:
        raise StatsError("hierarchical_bootstrap: no training seed" + (" in common" if b_counts is not None else ""))
    rng = np.random.default_rng(seed)
    ka, ma = _counts(a_counts, seeds, "hierarchical_bootstrap a")
    s = len(seeds)
    idx = rng.integers(0, s, size=(n_boot, s))

    def resampled_means(k: np.ndarray, m: np.ndarray) -> np.ndarray:
        mm = m[idx]
        return (rng.binomial(mm, (k / m)[idx]) / mm).mean(axis=1)

    stat = resampled_means(ka, ma)
    estimate = float((ka / ma).mean())
    if b_counts is not None:
        kb, mb = _counts(b_counts, seeds, "hierarchical_bootstrap b")
        stat = stat - resampled_means(kb, mb)
        estimate -= float((kb / mb).mean())
    return HierarchicalBootstrap(estimate=estimate, ci95=_percentile(stat, c), se=float(stat.std(ddof=1))
                                 if n_boot > 1 else 0.0, n_seeds=s, n_boot=int(n_boot), paired=b_counts is not None,
                                 seeds=tuple(seeds), confidence=c)


# ---------------------------------------------------------------------------------------------------------------------
# the sim − real gap


def gap(sim: Mapping[Hashable, float], real: Mapping[Hashable, float], confidence: float = 0.95) -> PairedDifference:
    """One method's sim − real gap, paired per training seed: :func:`paired_difference` ``(sim, real)`` (the t
    interval of the per-seed ``sim_s − real_s``; "separated" = the gap is there at the seed level)."""
    return paired_difference(sim, real, confidence)


def gap_closed(sim_m: Mapping[Hashable, float], real_m: Mapping[Hashable, float], sim_c: Mapping[Hashable, float],
               real_c: Mapping[Hashable, float], n_boot: int = 10_000, seed: int = 0,
               confidence: float = 0.95) -> GapClosed:
    """How much of co-training's (``c``) sim − real gap method ``m`` closes, over the seeds in all four.

    Per seed ``g^c_s = sim^c_s − real^c_s`` and ``g^m_s = sim^m_s − real^m_s``. ``closed`` =
    :func:`paired_difference` ``(g^c, g^m)`` (t interval of ``g^c_s − g^m_s``). ``fraction`` =
    ``mean_s(g^c_s − g^m_s) / mean_s(g^c_s)`` = ``1 − mean(g^m) / mean(g^c)``; ``None`` when ``mean(g^c) <= 0``
    (no gap to close). Its interval: a paired seed bootstrap (the same seeds drawn for both gaps, ``n_boot``
    resamples, ``numpy.random.default_rng(seed)``), percentiles ``(1∓c)/2`` of the ratio. When more than
    ``(1−c)/2`` of the resamples have ``mean(g^c) <= 0`` the ratio is unbounded at this confidence and the
    interval is ``None`` (``fraction_reason`` says so); otherwise those few resamples are left out.
    """
    c = _check_confidence(confidence)
    _check_n_boot(n_boot, "gap_closed")
    seeds = _common(sim_m, real_m, sim_c, real_c)
    if not seeds:
        raise StatsError("gap_closed: no training seed in all four of sim_m, real_m, sim_c, real_c")
    g_m = {s: float(sim_m[s]) - float(real_m[s]) for s in seeds}
    g_c = {s: float(sim_c[s]) - float(real_c[s]) for s in seeds}
    closed = paired_difference(g_c, g_m, c)
    gc = np.array([g_c[s] for s in seeds])
    gm = np.array([g_m[s] for s in seeds])
    mean_c = float(gc.mean())
    fraction: float | None = None
    ci: Interval | None = None
    reason: str | None = None
    if mean_c <= 0:
        reason = f"co-training has no sim - real gap to close (mean {mean_c:.3g} <= 0)"
    else:
        fraction = float((gc - gm).mean() / mean_c)
        if len(seeds) < 2:
            reason = "one seed: no interval"
        else:
            idx = np.random.default_rng(seed).integers(0, len(seeds), size=(n_boot, len(seeds)))
            den = gc[idx].mean(axis=1)
            ok = den > 0
            if (~ok).mean() > (1.0 - c) / 2.0:
                reason = (f"co-training's gap is not bounded away from 0: {(~ok).mean():.1%} of the seed resamples "
                          "have mean gap <= 0")
            else:
                ci = _percentile((gc - gm)[idx].mean(axis=1)[ok] / den[ok], c)
    return GapClosed(n=len(seeds), gap_cotrain=mean_c, gap_method=float(gm.mean()), closed=closed, fraction=fraction,
                     fraction_ci95=ci, fraction_reason=reason, seeds=tuple(seeds), confidence=c)


# ---------------------------------------------------------------------------------------------------------------------
# which offline signal predicts success


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (average ranks for ties): Pearson of the ranks; NaN for a constant row."""
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=1), rankdata(y, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx * rx).sum(axis=1) * (ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (rx * ry).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan)


def rank_correlation(x: Sequence[float], y: Sequence[float], n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> RankCorrelation:
    """Spearman's rho between ``x`` and ``y`` over runs (``scipy.stats.spearmanr``: rho and its p-value) with a
    percentile bootstrap interval: ``n_boot`` resamples of the ``(x_i, y_i)`` pairs with replacement
    (``numpy.random.default_rng(seed)``), rho of each; resamples where x or y is constant are left out.
    ``rho`` is ``None`` (with ``reason``) for fewer than 3 runs or a constant ``x`` or ``y``."""
    from scipy.stats import spearmanr

    c = _check_confidence(confidence)
    _check_n_boot(n_boot, "rank_correlation")
    xa, ya = _finite(x, "rank_correlation x"), _finite(y, "rank_correlation y")
    if xa.size != ya.size:
        raise StatsError(f"rank_correlation: x and y must pair up, got {xa.size} and {ya.size} values")
    n = int(xa.size)
    if n < 3:
        runs = "1 run" if n == 1 else f"{n} runs"
        return RankCorrelation(rho=None, ci95=None, p_value=None, n=n, reason=f"{runs}: need at least 3", confidence=c)
    for name, v in (("x", xa), ("y", ya)):
        if np.all(v == v[0]):
            return RankCorrelation(rho=None, ci95=None, p_value=None, n=n, reason=f"{name} is constant over the runs",
                                   confidence=c)
    res = spearmanr(xa, ya)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boot = _spearman_rows(xa[idx], ya[idx])
    boot = boot[np.isfinite(boot)]
    ci = _percentile(boot, c) if boot.size else None
    return RankCorrelation(rho=float(res.statistic), ci95=ci, p_value=float(res.pvalue), n=n,
                           reason=None if ci is not None else "every bootstrap resample was constant", confidence=c)


# ---------------------------------------------------------------------------------------------------------------------
# embeddings: projection and partner retrieval


def _rows(x: Any, what: str) -> np.ndarray:
    """``x`` (array, nested list or a tensor, by duck typing) as float64 ``(n, F)``: ``(n,)`` becomes ``(n, 1)``,
    more dimensions are flattened to ``F``."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().to("cpu").double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        raise StatsError(f"{what}: expected rows of features, got a scalar")
    return a[:, None] if a.ndim == 1 else a.reshape(a.shape[0], -1)


def pca_2d(x: Any) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA (scikit-learn ``PCA``, full SVD) of the rows of ``x``: the coordinates ``(n, 2)`` of the centred
    rows on the first two principal axes, and each axis's share of the variance ``s_k² / Σ s_j²``. Fewer than two
    axes (one feature, one row, no variance) are padded with zeros. Signs follow scikit-learn's ``svd_flip``."""
    a = _rows(x, "pca_2d")
    n, f = a.shape
    k = min(2, n, f)
    if n < 2 or k == 0 or not np.any(a != a[:1]):
        return np.zeros((n, 2)), np.zeros(2)
    from sklearn.decomposition import PCA
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    with threadpool_limits(limits=1, user_api="blas"):  # small problems; spinning BLAS threads cost seconds
        pca = PCA(n_components=k, svd_solver="full")
        xy = pca.fit_transform(a)
    share = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
    if k < 2:
        xy = np.concatenate([xy, np.zeros((n, 2 - k))], axis=1)
        share = np.pad(share, (0, 2 - k))
    return xy, share


def _partner_counts(src: Any, tgt: Any, metric: str, who: str) -> tuple[np.ndarray, np.ndarray] | None:
    """For each real (``tgt``) row ``i``: how many sim (``src``) rows are strictly nearer to it than its partner
    (row ``i`` of ``src``), and how many other sim rows are exactly as near; None for non-finite embeddings.
    Identical sim rows get bit-identical distances (one column computed per distinct row), so they tie exactly."""
    s, t = _rows(src, "src embeddings"), _rows(tgt, "tgt embeddings")
    if s.shape != t.shape:
        raise StatsError(f"src and tgt embeddings must be DTW pairs of the same shape, got {s.shape} and {t.shape}")
    if s.shape[0] < 2:
        raise StatsError(f"{who} needs at least 2 pairs, got {s.shape[0]}")
    if metric not in ("euclidean", "cosine"):
        raise StatsError(f"{who}: metric must be 'euclidean' or 'cosine', got {metric!r}")
    if not np.isfinite(s).all() or not np.isfinite(t).all():
        return None
    distinct, column = np.unique(s, axis=0, return_inverse=True)
    if metric == "euclidean":
        far = (t * t).sum(1)[:, None] + (distinct * distinct).sum(1)[None, :] - 2.0 * t @ distinct.T
    else:  # the larger the cosine similarity, the nearer; zero rows have similarity 0 to everything
        tn = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-300)
        sn = distinct / np.maximum(np.linalg.norm(distinct, axis=1, keepdims=True), 1e-300)
        far = -(tn @ sn.T)
    far = far[:, column.reshape(-1)]  # (n_tgt, n_src)
    partner = np.diagonal(far)[:, None]
    return (far < partner).sum(1), (far == partner).sum(1) - 1


def retrieval_at_1(src: Any, tgt: Any, metric: str = "euclidean") -> float:
    """Share of real (``tgt``) rows whose nearest sim (``src``) row is their own DTW partner (row ``i`` of
    ``src`` for row ``i`` of ``tgt``). ``metric``: ``"euclidean"`` (nearest: smallest ``|t_i − s_j|²``) or
    ``"cosine"`` (largest ``⟨t_i, s_j⟩ / |t_i||s_j|``; zero rows have similarity 0 to everything). Chance level is
    ``1 / n``.

    Ties are broken at random, in expectation: a partner that is nearest together with ``k`` other sim rows counts
    ``1 / (k + 1)``. The row order never matters, and collapsed embeddings (all equal) score the chance level
    ``1 / n``. Identical sim rows always tie, also when DTW gave several real rows the same sim frame as partner:
    such a group scores at most 1 in all, so the maximum is (distinct partners) / n. NaN for non-finite
    embeddings."""
    counts = _partner_counts(src, tgt, metric, "retrieval_at_1")
    if counts is None:
        return float("nan")
    closer, ties = counts
    return float(np.mean((closer == 0) / (1.0 + ties)))


def partner_rank(src: Any, tgt: Any, metric: str = "euclidean") -> float:
    """Mean rank of each real row's DTW partner among the sim rows, nearest first (0 = the partner is the nearest;
    chance ``(n − 1) / 2``), with :func:`retrieval_at_1`'s metric and tie rule: the expected rank when ties are
    broken at random, i.e. the sim rows strictly nearer plus half of those exactly as near. NaN for non-finite
    embeddings."""
    counts = _partner_counts(src, tgt, metric, "partner_rank")
    if counts is None:
        return float("nan")
    closer, ties = counts
    return float(np.mean(closer + ties / 2.0))
