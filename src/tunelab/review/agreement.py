"""How much people agree with each other, and how much each automated metric agrees with them.

Krippendorff's alpha comes from `krippendorff`, Fleiss' kappa from statsmodels, percent
agreement is a count. Cohen's kappa, accuracy and the correlations are computed for all
bootstrap resamples at once (a resample is the items with integer multiplicities, so each
is a weighted statistic: one array operation instead of a library call per resample); they
follow scikit-learn's and scipy's definitions and the tests compare them with those libraries.

Confidence intervals are percentile bootstraps over *items*: items are the unit
that was sampled, raters are fixed, so every resample keeps whole rows of the
item × rater matrix and all figures of one dimension share the same resamples.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import krippendorff
import numpy as np

from tunelab.review.errors import ReviewError
from tunelab.review.store import Rating

# Pairwise preferences are ordinal: A better < tie < B better.
PREF_CODE = {"A": 0.0, "tie": 1.0, "B": 2.0}
PREF_NAME = {v: k for k, v in PREF_CODE.items()}
KAPPA_WEIGHTS = {"unweighted": None, "linear": "linear", "quadratic": "quadratic"}
ALPHA_LEVELS = ("nominal", "ordinal", "interval")


@dataclass
class AgreementConfig:
    n_boot: int = 500  # each draw re-runs every library call; 500 keeps a typical report under a minute
    seed: int = 0
    confidence: float = 0.95
    scale: tuple[int, int] | None = None  # full rating scale, so unused categories still count
    pass_threshold: float | None = None  # human mean >= this is a pass; default: scale midpoint


@dataclass
class AutoScore:
    """One automated figure for one item: a metric score, a pass/fail, or a judge's A/B/tie."""

    item_id: str
    metric: str
    value: float | bool | str
    dimension: str | None = None  # compare only against this human dimension
    kind: str | None = None  # 'score' | 'pass_fail' | 'pairwise'; inferred when None


@dataclass
class _Dim:
    name: str
    kind: str  # 'score' or 'preference'
    items: list[str]
    raters: list[str]
    m: np.ndarray  # items × raters, NaN where a rater did not rate the item
    categories: np.ndarray
    boot: np.ndarray = field(default=None)  # n_boot × n_items row indices


def agreement(ratings: list[Rating], scores: list[AutoScore] | None = None,
              config: AgreementConfig | None = None) -> dict:
    """The JSON-ready report: keyed by dimension, figures as {value, ci_low, ci_high}."""
    config = config or AgreementConfig()
    if not ratings:
        raise ReviewError("no human ratings to analyse")
    return _agreement(ratings, scores, config)


def _agreement(ratings: list[Rating], scores: list[AutoScore] | None, config: AgreementConfig) -> dict:
    rng = np.random.default_rng(config.seed)
    out = {}
    by_metric = defaultdict(list)
    for s in scores or []:
        by_metric[s.metric].append(s)
    for dim in _dimensions(ratings, config):
        dim.boot = rng.integers(0, len(dim.items), size=(config.n_boot, len(dim.items)))
        report = inter_rater(dim, config)
        report["automated"] = {}
        for metric, rows in sorted(by_metric.items()):
            fig = automated(dim, rows, config)
            if fig is not None:
                report["automated"][metric] = fig
        out[dim.name] = report
    return out


def inter_rater(dim: _Dim, config: AgreementConfig) -> dict:
    boot = _Bootstrap(dim, config)
    kappas = {}
    for i, j in itertools.combinations(range(len(dim.raters)), 2):
        both = ~np.isnan(dim.m[:, i]) & ~np.isnan(dim.m[:, j])
        if both.sum() < 2:
            continue
        kappas[f"{dim.raters[i]}|{dim.raters[j]}"] = {
            name: boot.vector(lambda W, i=i, j=j, w=w: kappa_w(dim.m[:, i], dim.m[:, j], dim.categories, w, W))
            for name, w in KAPPA_WEIGHTS.items()
        }
    return {
        "n_items": int(np.sum((~np.isnan(dim.m)).sum(1) > 0)),
        "n_raters": len(dim.raters),
        "percent_agreement": boot.figure(percent_agreement),
        "cohen_kappa": kappas,
        "fleiss_kappa": boot.figure(lambda m: fleiss_kappa(_counts(m, dim.categories))),
        "krippendorff_alpha": {
            level: boot.figure(lambda m, level=level: _alpha(m, dim.categories, level)) for level in ALPHA_LEVELS
        },
    }


def automated(dim: _Dim, rows: list[AutoScore], config: AgreementConfig) -> dict | None:
    """Metric vs human figures for one dimension, with the human–human ceiling and a verdict."""
    got = metric_vector(dim, rows)
    if got is None:
        return None
    kind, x = got
    boot = _Bootstrap(dim, config)
    rated = ~np.all(np.isnan(dim.m), axis=1)
    if kind == "score":
        h = _human_mean(dim.m)
        figs = {name: boot.vector(lambda W, name=name: _corr_w(name, x, h, W)) for name in _CORRELATIONS}
        ceiling = {name: boot.vector(lambda W, name=name: _over_raters(
            dim.m, lambda own, rest: _corr_w(name, own, _human_mean(rest), W))) for name in _CORRELATIONS}
        key = "spearman"
    else:
        if kind == "pass_fail":
            threshold = config.pass_threshold
            if threshold is None:
                threshold = (dim.categories.min() + dim.categories.max()) / 2
            labels = np.array([0.0, 1.0])

            def human_of(m):   # pass/fail of the raters' mean, NaN where nobody rated
                mean = _human_mean(m)
                return np.where(np.isnan(mean), np.nan, (mean >= threshold).astype(float))

            def own_of(col):
                return np.where(np.isnan(col), np.nan, (col >= threshold).astype(float))
        else:
            labels = np.array(sorted(PREF_NAME))
            human_of, own_of = _majority, (lambda col: col)
        h = np.where(rated, human_of(dim.m), np.nan)
        figs = {"accuracy": boot.vector(lambda W: accuracy_w(x, h, W)),
                "cohen_kappa": boot.vector(lambda W: kappa_w(x, h, labels, None, W))}
        ceiling = {"accuracy": boot.vector(lambda W: _over_raters(
                       dim.m, lambda own, rest: accuracy_w(own_of(own), human_of(rest), W))),
                   "cohen_kappa": boot.vector(lambda W: _over_raters(
                       dim.m, lambda own, rest: kappa_w(own_of(own), human_of(rest), labels, None, W)))}
        if kind == "pass_fail":
            figs["pass_threshold"] = float(threshold)
        key = "cohen_kappa"
    return {"kind": kind, "n_items": int(np.sum(~np.isnan(x) & ~np.all(np.isnan(dim.m), 1))), **figs,
            "human_ceiling": ceiling,
            "verdict": verdict(key, figs[key], ceiling[key], why_undefined(x, _human_mean(dim.m)))}


def metric_vector(dim: _Dim, rows: list[AutoScore]) -> tuple[str, np.ndarray] | None:
    """(kind, per-item values aligned with dim.items) — None when the metric does not apply here."""
    rows = [r for r in rows if r.dimension in (None, dim.name)]
    kind = _kind(rows)
    if not rows or (kind == "pairwise") != (dim.kind == "preference"):
        return None
    index = {item: k for k, item in enumerate(dim.items)}
    x = np.full(len(dim.items), np.nan)
    for r in rows:
        if r.item_id in index:
            x[index[r.item_id]] = _encode(r, kind)
    if np.sum(~np.isnan(x)) < 3:
        return None
    return kind, x


def plot_data(ratings: list[Rating], scores: list[AutoScore] | None, config: AgreementConfig) -> tuple[dict, dict]:
    """What the HTML report plots: {dim: _Dim} and {dim: {metric: (kind, values)}}."""
    dims = {d.name: d for d in _dimensions(ratings, config)}
    by_metric = defaultdict(list)
    for s in scores or []:
        by_metric[s.metric].append(s)
    vectors = {}
    for name, dim in dims.items():
        for metric, rows in sorted(by_metric.items()):
            got = metric_vector(dim, rows)
            if got is not None:
                vectors.setdefault(name, {})[metric] = got
    return dims, vectors


def verdict(key: str, fig: dict, ceiling: dict, why: str | None = None) -> str:
    """Plain words: is the metric about as good a rater as a human is, judged by `key`?

    "Agrees" needs the interval above zero; "as well as humans" needs it not to lie wholly below
    the human–human interval (intervals compared, not a point against a bound)."""
    v, lo, hi = fig["value"], fig["ci_low"], fig["ci_high"]
    if v is None:
        return f"cannot be judged: {why or 'not enough rated items'}"
    if lo is None:
        return f"no interval: too many bootstrap resamples were degenerate ({key} {v:.2f})"
    top, top_lo, top_hi = ceiling["value"], ceiling["ci_low"], ceiling["ci_high"]
    said = f"{key} {v:.2f} [{lo:.2f}, {hi:.2f}]"
    if top is not None:
        said += f" vs human–human {top:.2f}" + (f" [{top_lo:.2f}, {top_hi:.2f}]" if top_lo is not None else "")
    if top is not None and top <= 0:
        return f"cannot be validated: the humans themselves do not agree on this dimension ({said})"
    if hi < 0:
        return f"disagrees with humans: the agreement is negative ({said})"
    if lo <= 0:
        return f"no reliable agreement with humans: the interval includes zero ({said})"
    if top is None or top_lo is None:
        return f"agrees with humans (no human–human ceiling to compare with) ({said})"
    if hi < top_lo:
        return f"agrees with humans, but credibly less than humans agree with each other ({said})"
    return f"agrees with humans about as well as humans agree with each other ({said})"


def why_undefined(x: np.ndarray, human: np.ndarray) -> str | None:
    """Why a metric–human figure has no value: too few items, or a constant side."""
    ok = ~np.isnan(x) & ~np.isnan(human)
    if ok.sum() < 3:
        return f"only {int(ok.sum())} items have both a human and an automated score (need 3)"
    if np.ptp(x[ok]) == 0:
        return f"the automated score is constant on these items (every value {x[ok][0]:g})"
    if np.ptp(human[ok]) == 0:
        return f"the human scores are constant on these items (every value {human[ok][0]:g})"
    return None


def percent_agreement(m: np.ndarray) -> float:
    """Share of agreeing rater pairs per item, averaged over items with at least two ratings."""
    per_item = []
    for row in m:
        vals = row[~np.isnan(row)]
        n = len(vals)
        if n >= 2:
            same = sum(c * (c - 1) for c in Counter(vals.tolist()).values())
            per_item.append(same / (n * (n - 1)))
    return float(np.mean(per_item)) if per_item else math.nan


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss (1971) kappa from an items × categories count table with equal raters per item (statsmodels)."""
    from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss

    if counts.shape[0] < 2:
        return math.nan
    p_cat = counts.sum(0) / counts.sum()
    if float(np.sum(p_cat * p_cat)) == 1.0:  # every rating in one category: kappa is undefined
        return math.nan
    return float(_fleiss(counts, method="fleiss"))


def kappa_w(a: np.ndarray, b: np.ndarray, labels, weights: str | None, W: np.ndarray) -> np.ndarray:
    """Cohen's kappa of a vs b for each row of item weights W (R × n), as scikit-learn defines it
    (weights on label positions); items where either side is NaN are left out."""
    labels = np.asarray(labels, dtype=float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    W = W * ok
    k = len(labels)
    onehot = np.eye(k)
    ta = onehot[np.searchsorted(labels, np.where(ok, a, labels[0]))]
    tb = onehot[np.searchsorted(labels, np.where(ok, b, labels[0]))]
    confusion = np.einsum("ri,ik,il->rkl", W, ta, tb, optimize=True)
    n = confusion.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = confusion.sum(2)[:, :, None] * confusion.sum(1)[:, None, :] / n[:, None, None]
        pos = np.arange(k)
        wm = {None: 1.0 - np.eye(k), "linear": np.abs(pos[:, None] - pos[None, :]),
              "quadratic": (pos[:, None] - pos[None, :]) ** 2.0}[weights]
        kappa = 1 - (wm * confusion).sum((1, 2)) / (wm * expected).sum((1, 2))
    kappa[W.sum(1) < 2] = np.nan
    return kappa


def accuracy_w(a: np.ndarray, b: np.ndarray, W: np.ndarray) -> np.ndarray:
    ok = ~np.isnan(a) & ~np.isnan(b)
    W = W * ok
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (W * (np.where(ok, a, 0) == np.where(ok, b, 0))).sum(1) / W.sum(1)
    acc[W.sum(1) < 2] = np.nan
    return acc


def _corr_w(name: str, x: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    from tunelab.review.levels import _shared

    ok = ~np.isnan(x) & ~np.isnan(y)
    out = _shared(x[ok], y[ok], W[:, ok])[name] if ok.any() else np.full(len(W), np.nan)
    out[W[:, ok].sum(1) < 3] = np.nan
    return out


def _over_raters(m: np.ndarray, fig) -> np.ndarray:
    """The mean over raters of fig(one rater's column, the other raters' matrix), NaNs left out."""
    vals = np.stack([fig(m[:, r], np.delete(m, r, axis=1)) for r in range(m.shape[1])])
    counted = np.isfinite(vals).sum(0)
    return np.where(counted > 0, np.nansum(np.where(np.isfinite(vals), vals, 0), axis=0) / np.maximum(counted, 1),
                    np.nan)


# -- building the item × rater matrix ------------------------------------------
def _dimensions(ratings: list[Rating], config: AgreementConfig) -> list[_Dim]:
    by_dim: dict[str, list[Rating]] = defaultdict(list)
    for r in ratings:
        by_dim[r.dimension].append(r)
    dims = []
    for name, rows in by_dim.items():
        prefs = {r.preference is not None for r in rows}
        if len(prefs) > 1:
            raise ReviewError(f"dimension {name!r}: mixes scores and preferences; expected one kind")
        kind = "preference" if prefs == {True} else "score"
        items = list(dict.fromkeys(r.item_id for r in rows))
        raters = sorted({r.rater for r in rows})
        ii = {x: k for k, x in enumerate(items)}
        rr = {x: k for k, x in enumerate(raters)}
        m = np.full((len(items), len(raters)), np.nan)
        for r in rows:
            m[ii[r.item_id], rr[r.rater]] = PREF_CODE[r.preference] if kind == "preference" else r.score
        cats = set(np.unique(m[~np.isnan(m)]).tolist())
        if kind == "preference":
            cats |= set(PREF_CODE.values())
        elif config.scale is not None:
            cats |= set(range(config.scale[0], config.scale[1] + 1))
        dims.append(_Dim(name, kind, items, raters, m, np.array(sorted(cats), dtype=float)))
    return dims


def _counts(m: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Category counts per item, on the items rated by the most common number (>= 2) of raters."""
    n_per = (~np.isnan(m)).sum(1)
    common = Counter(n for n in n_per.tolist() if n >= 2).most_common(1)
    if not common:
        return np.zeros((0, len(categories)))
    rows = m[n_per == common[0][0]]
    return np.stack([(rows == c).sum(1) for c in categories], axis=1).astype(float)


# -- library calls, made NaN-safe for degenerate bootstrap resamples -------------
def _alpha(m, categories, level) -> float:
    data = m.T
    if np.sum((~np.isnan(data)).sum(0) >= 2) < 1 or len(categories) < 2:
        return math.nan
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                            value_domain=categories))
    except (ValueError, ZeroDivisionError):
        return math.nan


_CORRELATIONS = ("spearman", "kendall", "pearson")


def _human_mean(m) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-NaN rows stay NaN
        return np.nanmean(m, axis=1)


def _majority(m) -> np.ndarray:
    """Most common preference per item; a split vote counts as a tie."""
    out = np.full(m.shape[0], np.nan)
    for k, row in enumerate(m):
        vals = Counter(row[~np.isnan(row)].tolist()).most_common()
        if vals:
            out[k] = vals[0][0] if len(vals) == 1 or vals[0][1] > vals[1][1] else PREF_CODE["tie"]
    return out


# -- automated scores ----------------------------------------------------------
def _kind(rows: list[AutoScore]) -> str:
    kinds = {r.kind for r in rows if r.kind}
    if len(kinds) == 1:
        return kinds.pop()
    values = [r.value for r in rows]
    if values and all(isinstance(v, str) and v in PREF_CODE for v in values):
        return "pairwise"
    if values and all(isinstance(v, bool) or (isinstance(v, str) and v.lower() in _PASS) for v in values):
        return "pass_fail"
    return "score"


_PASS = {"pass": 1.0, "fail": 0.0, "true": 1.0, "false": 0.0}


def _encode(r: AutoScore, kind: str) -> float:
    v = r.value
    if kind == "pairwise":
        if v not in PREF_CODE:
            raise ReviewError(f"metric {r.metric!r}, item {r.item_id!r}: judge verdict must be A, B or tie, got {v!r}")
        return PREF_CODE[v]
    if kind == "pass_fail":
        if isinstance(v, str):
            if v.lower() not in _PASS:
                raise ReviewError(f"metric {r.metric!r}, item {r.item_id!r}: expected pass/fail, got {v!r}")
            return _PASS[v.lower()]
        return float(bool(v))
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ReviewError(f"metric {r.metric!r}, item {r.item_id!r}: expected a number, got {v!r}") from None


class _Bootstrap:
    """Percentile bootstrap over items; every figure of a dimension reuses the same resamples.

    `vector(fn)` is the fast path: fn(W) computes a figure for every row of item multiplicities W at
    once. `figure(fn)` calls a library function once per resample (Fleiss, Krippendorff)."""

    def __init__(self, dim: _Dim, config: AgreementConfig):
        self.dim, self.config = dim, config
        n_boot, n = dim.boot.shape
        flat = (np.arange(n_boot)[:, None] * n + dim.boot).ravel()
        self.weights = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)

    def vector(self, fn) -> dict:
        value = float(fn(np.ones((1, len(self.dim.items))))[0])
        return self._interval(value, lambda: fn(self.weights))

    def figure(self, fn) -> dict:
        value = fn(self.dim.m)
        return self._interval(value, lambda: np.array([fn(self.dim.m[rows]) for rows in self.dim.boot]))

    def _interval(self, value: float, draws_fn) -> dict:
        if math.isnan(value):
            return {"value": None, "ci_low": None, "ci_high": None}
        draws = draws_fn()
        draws = draws[~np.isnan(draws)]
        tail = (1 - self.config.confidence) / 2 * 100
        # With most resamples degenerate the interval would describe a different population.
        if len(draws) < max(2, 0.5 * len(self.dim.boot)):
            return {"value": value, "ci_low": None, "ci_high": None}
        lo, hi = np.percentile(draws, [tail, 100 - tail])
        return {"value": value, "ci_low": float(lo), "ci_high": float(hi)}
