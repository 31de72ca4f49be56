"""Agreement between scores and human MOS: SRCC, KRCC, PLCC, the IQA logistic fit, bootstrap CIs.

Point estimates are scipy.stats' own. Confidence intervals: ``scipy.stats.bootstrap`` (paired,
percentile, seeded) up to ``bootstrap_max_n`` pairs; above it the Fisher-z normal approximation
(standard errors 1/sqrt(n-3) for PLCC, sqrt(1.06/(n-3)) for SRCC, sqrt(0.437/(n-4)) for KRCC),
since resampling a million pairs a thousand times per figure buys nothing at that precision.
Every figure says which method gave its interval.

A figure that cannot be computed (too few pairs, constant input, a fit that does not converge)
is returned as ``None`` with a reason, never as NaN.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from qeval_ray.report.options import MetricOptions

MIN_PAIRS = 3
MIN_FIT_PAIRS = 5  # a 4-parameter curve through 4 points is no fit at all
FIT_MAX_PAIRS = 50_000  # the curve is fitted to a seeded sample of this many pairs, evaluated on all
GROUP_EXACT_MAX = 200  # model level: groups up to this size are resampled item by item
CORRELATIONS = ("srcc", "krcc", "plcc")


@dataclass
class Figure:
    """The agreement of one group of (score, MOS) pairs."""

    n: int
    srcc: float | None = None
    krcc: float | None = None
    plcc: float | None = None
    plcc_fitted: float | None = None
    rmse_fitted: float | None = None
    ci: dict[str, list[float]] = field(default_factory=dict)
    ci_method: str | None = None
    logistic: dict | None = None  # fitted parameters, or {"failed": reason}
    reason: str | None = None  # why there are no figures


def _statistic(name: str):
    return {"srcc": lambda x, y: stats.spearmanr(x, y).statistic,
            "krcc": lambda x, y: stats.kendalltau(x, y).statistic,
            "plcc": lambda x, y: stats.pearsonr(x, y).statistic}[name]


_KENDALL_BATCHED_MAX_N = 400  # the batched tau-b is O(n^2) per resample


def kendall_tau_b(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall's tau-b along the last axis of (..., n) arrays, as scipy.stats.kendalltau defines it.

    scipy has no batched form; for the few dozen generator means of a model-level bootstrap, counting
    concordant pairs directly over all resamples at once is far faster than one call per resample.
    """
    x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
    n = x.shape[-1]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    dx = np.sign(x[..., :, None] - x[..., None, :])[..., upper]
    dy = np.sign(y[..., :, None] - y[..., None, :])[..., upper]
    pairs = n * (n - 1) / 2
    ties_x, ties_y = (dx == 0).sum(-1), (dy == 0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (dx * dy).sum(-1) / np.sqrt((pairs - ties_x) * (pairs - ties_y))


def _batched(name: str, n: int):
    """The statistic over many resamples at once, or None where none fits (KRCC on large n).

    Spearman's rho is Pearson's r of the average ranks, which is how scipy computes it too.
    """
    if name == "srcc":
        return lambda x, y, axis=-1: stats.pearsonr(stats.rankdata(x, axis=axis), stats.rankdata(y, axis=axis),
                                                    axis=axis).statistic
    if name == "plcc":
        return lambda x, y, axis=-1: stats.pearsonr(x, y, axis=axis).statistic
    return kendall_tau_b if n <= _KENDALL_BATCHED_MAX_N else None


def correlation(name: str, x: np.ndarray, y: np.ndarray) -> float:
    return float(_statistic(name)(x, y))


# --- the four-parameter logistic customary in IQA (VQEG) --------------------------------------


def logistic4(x, b1, b2, b3, b4):
    """MOS predicted from a score: a monotonic S-curve from b2 (low) to b1 (high) around b3."""
    with np.errstate(over="ignore"):  # exp overflows to inf far from b3: the curve's plateau, as meant
        return (b1 - b2) / (1.0 + np.exp(-(x - b3) / np.abs(b4))) + b2


def fit_logistic(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[np.ndarray | None, str | None]:
    """Least-squares fit of :func:`logistic4`; (parameters, None) or (None, why it failed)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) > FIT_MAX_PAIRS:  # four parameters are pinned long before a million points
        pick = np.random.default_rng(seed).choice(len(x), FIT_MAX_PAIRS, replace=False)
        x, y = x[pick], y[pick]
    spread = float(np.std(x)) or 1.0
    p0 = [float(np.max(y)), float(np.min(y)), float(np.mean(x)), spread / 4]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", optimize.OptimizeWarning)
            params, _ = optimize.curve_fit(logistic4, x, y, p0=p0, maxfev=20_000)
    except (RuntimeError, optimize.OptimizeWarning, ValueError) as e:
        return None, f"logistic fit did not converge: {e}"
    if not np.all(np.isfinite(params)):
        return None, "logistic fit gave non-finite parameters"
    return params, None


# --- intervals ------------------------------------------------------------------------------


def _fisher_interval(name: str, r: float, n: int, confidence: float) -> list[float] | None:
    se = {"plcc": 1 / math.sqrt(n - 3), "srcc": math.sqrt(1.06 / (n - 3)), "krcc": math.sqrt(0.437 / (n - 4))}[name]
    if abs(r) >= 1:
        return [r, r]
    z = math.atanh(r)
    q = stats.norm.ppf(0.5 + confidence / 2)
    return [math.tanh(z - q * se), math.tanh(z + q * se)]


def instance_intervals(x, y, names, options: MetricOptions) -> tuple[dict, str | None]:
    if options.bootstrap <= 0:
        return {}, None
    n = len(x)
    if n > options.bootstrap_max_n:
        method = f"Fisher z normal approximation (n = {n} > {options.bootstrap_max_n})"
        return {k: _fisher_interval(k, correlation(k, x, y), n, options.confidence) for k in names}, method
    out = {}
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # resamples of a small group can be constant: NaN, dropped
            batched = _batched(name, n)
            result = stats.bootstrap(
                (x, y), batched or _statistic(name), paired=True, vectorized=batched is not None,
                n_resamples=options.bootstrap, batch=256, confidence_level=options.confidence,
                method="percentile", rng=np.random.default_rng(options.seed),
            )
        lo, hi = result.confidence_interval
        out[name] = [float(lo), float(hi)] if np.isfinite([lo, hi]).all() else None
    return out, f"bootstrap percentile, {options.bootstrap} resamples of the pairs, seed {options.seed}"


def group_mean_intervals(x, y, groups, names, options: MetricOptions) -> tuple[dict, str | None]:
    """Intervals for correlations of per-group means (model level).

    Resampled: the items within each group (stratified), with replacement; each group's means are
    recomputed and the correlation is taken across groups. A group of more than
    ``GROUP_EXACT_MAX`` items has its resampled means drawn from their normal approximation: the
    bootstrap distribution of a mean of hundreds of bounded values is normal to high accuracy.
    """
    if options.bootstrap <= 0:
        return {}, None
    rng = np.random.default_rng(options.seed)
    labels, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    means = np.empty((options.bootstrap, 2, len(labels)))
    for j, rows in enumerate(members):
        gx, gy = x[rows], y[rows]
        n = len(gx)
        if n <= GROUP_EXACT_MAX:
            for start in range(0, options.bootstrap, 64):
                idx = rng.integers(0, n, size=(min(64, options.bootstrap - start), n))
                means[start : start + len(idx), 0, j] = gx[idx].mean(axis=1)
                means[start : start + len(idx), 1, j] = gy[idx].mean(axis=1)
        else:
            cov = np.cov(gx, gy, bias=True) / n  # the bootstrap variance of a mean: population var / n
            means[:, :, j] = rng.multivariate_normal([gx.mean(), gy.mean()], cov, size=options.bootstrap)
    out = {}
    tail = (1 - options.confidence) / 2 * 100
    for name in names:
        batched = _batched(name, len(labels))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resample can be constant: its statistic is NaN
            if batched is not None:
                values = np.asarray(batched(means[:, 0], means[:, 1], axis=-1), dtype=float)
            else:
                values = np.array([correlation(name, m[0], m[1]) for m in means])
        values = values[np.isfinite(values)]
        out[name] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))] if len(values) else None
    method = (f"bootstrap percentile, {options.bootstrap} resamples of the items within each group "
              f"(stratified), group means recomputed (normal approximation for groups over "
              f"{GROUP_EXACT_MAX} items), seed {options.seed}")
    return out, method


# --- one figure -----------------------------------------------------------------------------


def agreement(x, y, options: MetricOptions = MetricOptions(), groups=None) -> Figure:
    """All figures for pairs (x = scores, y = MOS); with ``groups``, of the per-group means."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if groups is not None:
        groups = np.asarray(groups)
        _, inverse = np.unique(groups, return_inverse=True)
        counts = np.bincount(inverse)
        mx, my = np.bincount(inverse, x) / counts, np.bincount(inverse, y) / counts
    else:
        mx, my = x, y
    figure = Figure(n=len(mx))
    if len(mx) < MIN_PAIRS:
        figure.reason = f"{len(mx)} {'groups' if groups is not None else 'pairs'}: at least {MIN_PAIRS} are needed"
        return figure
    if np.ptp(mx) == 0 or np.ptp(my) == 0:
        figure.reason = "constant " + ("scores" if np.ptp(mx) == 0 else "MOS") + ": correlation is undefined"
        return figure
    figure.srcc, figure.krcc, figure.plcc = (correlation(k, mx, my) for k in CORRELATIONS)
    params, failure = fit_logistic(mx, my, options.seed) if len(mx) >= MIN_FIT_PAIRS else (
        None, f"{len(mx)} points: a 4-parameter fit needs at least {MIN_FIT_PAIRS}")
    if params is None:
        figure.logistic = {"failed": failure}
    else:
        predicted = logistic4(mx, *params)
        figure.logistic = dict(zip(("beta1", "beta2", "beta3", "beta4"), map(float, params)))
        if np.ptp(predicted) > 0:
            # Signed by the fitted curve's direction: a decreasing fit stays a negative agreement.
            direction = 1.0 if params[0] >= params[1] else -1.0
            figure.plcc_fitted = direction * correlation("plcc", predicted, my)
        figure.rmse_fitted = float(np.sqrt(np.mean((predicted - my) ** 2)))
    if groups is None:
        figure.ci, figure.ci_method = instance_intervals(mx, my, CORRELATIONS, options)
    else:
        figure.ci, figure.ci_method = group_mean_intervals(x, y, groups, CORRELATIONS, options)
    return figure
