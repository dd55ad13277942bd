"""Uncertainty, one rule everywhere (eval table, report, ladder, compare):
`interval(values)` is the Wilson score interval when every value is 0 or 1 (a
pass rate: it stays inside [0, 1] and behaves at 0% and 100%) and the percentile
bootstrap of the mean otherwise (it stays inside the values' range, where a
t-interval on a bounded score such as ROUGE or a 1-10 judge spills past the scale).
Differences between paired variants use the paired bootstrap."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Estimate:
    mean: float
    low: float
    high: float
    n: int
    method: str = "t"      # "wilson", "bootstrap" or "t"


def interval(values: list[float | None], confidence: float = 0.95, *, binary: bool | None = None) -> Estimate | None:
    """The 95% CI for the mean of `values` (None entries ignored). `binary` forces
    or forbids Wilson; by default it is used exactly when every value is 0 or 1."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    if binary is None:
        binary = set(xs) <= {0.0, 1.0}
    return wilson(int(sum(xs)), len(xs), confidence) if binary else bootstrap_mean(xs, confidence)


def bootstrap_mean(values: list[float], confidence: float = 0.95, *, resamples: int = 10_000,
                   seed: int = 0) -> Estimate:
    """Mean with a percentile bootstrap CI (items resampled with replacement; fixed seed, so
    the same data always prints the same interval)."""
    xs = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = xs[rng.integers(0, xs.size, size=(resamples, xs.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Estimate(float(xs.mean()), float(low), float(high), int(xs.size), "bootstrap")


def wilson(successes: int, n: int, confidence: float = 0.95) -> Estimate:
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), n, "wilson")


def mean_ci(values: list[float], confidence: float = 0.95) -> Estimate | None:
    """Mean with a t-interval. n=1 gives a zero-width interval (nothing to estimate spread from)."""
    xs = np.asarray([v for v in values if v is not None], dtype=float)
    if xs.size == 0:
        return None
    mean = float(xs.mean())
    if xs.size < 2:
        return Estimate(mean, mean, mean, 1)
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, xs.size - 1) * xs.std(ddof=1) / math.sqrt(xs.size))
    return Estimate(mean, mean - half, mean + half, int(xs.size))


def paired_bootstrap(a: list[float], b: list[float], *, resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[Estimate, float]:
    """Mean of (b - a) with a percentile bootstrap CI resampling items (keeping pairs
    together, so per-item difficulty cancels), and the two-sided bootstrap p-value
    for 'no difference' (twice the smaller tail mass beyond zero)."""
    d = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    if d.size == 0:
        raise ValueError("no paired values")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    p = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
    return Estimate(float(d.mean()), float(low), float(high), int(d.size), "bootstrap"), p


def percentile(values: list[float], q: float) -> float | None:
    xs = [v for v in values if v is not None]
    return float(np.percentile(xs, q)) if xs else None
