"""Metric–human correlation at the three levels the metric-validation papers report
(SummEval, Fabbri et al. 2021; USR; UniEval; G-Eval):

- item level: every rated output is one point;
- input level: for each input, correlate across the systems that answered it, then
  average over inputs (inputs where the humans or the metric give every system the
  same score have no correlation: they are skipped and counted);
- system level: correlate the per-system means.

Pearson, Spearman and Kendall's tau-b, each with a percentile-bootstrap 95% interval.
Inputs are what was sampled, so every resample draws inputs with replacement (and,
at system level with five or more systems, systems too).

Speed: a bootstrap resample of inputs is the original items with integer
multiplicities, so each statistic is computed for all resamples at once as a
*weighted* statistic over the original items — Pearson from weighted moments,
Spearman as Pearson on weighted mid-ranks, Kendall's tau-b as ½·wᵀSw with
S_ij = sign(x_i−x_j)·sign(y_i−y_j) (one matrix product for all resamples) and tie
counts from grouped weights. With integer weights these equal the textbook
statistics on the expanded resample exactly (tests compare with scipy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

LEVELS = ("item", "input", "system")
STATS = ("pearson", "spearman", "kendall")
HEADLINE = "spearman"  # the statistic verdicts are read from

EXPLAIN = {
    "pearson": "Pearson r: do metric and human scores rise together along a straight line? −1…1, 0 = no linear relation.",
    "spearman": "Spearman ρ: do metric and humans put the outputs in the same order? Pearson on ranks, −1…1.",
    "kendall": "Kendall τ-b: over all pairs of outputs, the share both order the same way minus the share they "
               "order oppositely (adjusted for ties), −1…1.",
    "item": "item level: one point per rated output, all inputs and systems pooled.",
    "input": "input level: for each input, correlate across the systems that answered it, then average over inputs.",
    "system": "system level: correlate the per-system mean scores — do metric and humans rank the systems alike?",
    "ci": "95% CI: bootstrap interval from resampling inputs (and systems when there are ≥ 5); "
          "if it lies above 0 the agreement is unlikely to be chance.",
    "n": "n: rated outputs (item level), inputs averaged over (input level) or systems (system level).",
    "skipped": "skipped: inputs left out at input level because the humans or the metric gave every system "
               "the same score there (a correlation is undefined).",
    "ceiling": "human–human ceiling: how well one rater's scores track the mean of the other raters' "
               "(Spearman, same level); a metric cannot be expected to beat it.",
}


@dataclass
class Design:
    """Who answered what: each rated output's input and system, as integer codes."""

    item_ids: list[str]
    input_of: np.ndarray
    system_of: np.ndarray
    inputs: list[str]
    systems: list[str]

    @classmethod
    def build(cls, item_ids: list[str], input_ids: list[str], systems: list[str]) -> "Design":
        ins, in_codes = np.unique(np.asarray(input_ids, dtype=object).astype(str), return_inverse=True)
        sys_, sys_codes = np.unique(np.asarray(systems, dtype=object).astype(str), return_inverse=True)
        return cls(list(item_ids), in_codes, sys_codes, ins.tolist(), sys_.tolist())


@dataclass
class BootConfig:
    n_boot: int = 1000
    seed: int = 0
    confidence: float = 0.95
    levels: tuple[str, ...] = LEVELS


@dataclass
class Draws:
    """Shared resamples, so every metric and dimension is judged on the same draws."""

    inputs: np.ndarray               # n_boot × n_inputs multiplicities
    systems: np.ndarray | None       # n_boot × n_systems multiplicities, None with < 5 systems

    @classmethod
    def make(cls, design: Design, config: BootConfig) -> "Draws":
        rng = np.random.default_rng(config.seed)
        n_in, n_sys = len(design.inputs), len(design.systems)
        w_in = rng.multinomial(n_in, np.full(n_in, 1 / n_in), size=config.n_boot).astype(float)
        w_sys = (rng.multinomial(n_sys, np.full(n_sys, 1 / n_sys), size=config.n_boot).astype(float)
                 if n_sys >= 5 else None)
        return cls(w_in, w_sys)


@dataclass
class Figure:
    """One (metric, dimension, level) row of the report."""

    metric: str
    dimension: str
    level: str
    n: int
    values: dict[str, float | None]
    ci: dict[str, list[float] | None]
    skipped_inputs: int | None = None
    skipped_why: dict[str, int] | None = None
    ceiling: dict | None = None          # {"value", "ci"} of the human–human Spearman at this level
    note: str | None = None              # why a figure is missing (constant scores, too few points)
    verdict: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"metric": self.metric, "dimension": self.dimension, "level": self.level, "n": self.n,
               **self.values, "ci": self.ci, "skipped_inputs": self.skipped_inputs,
               "human_ceiling": self.ceiling, "verdict": self.verdict}
        if self.skipped_why:
            out["skipped_why"] = self.skipped_why
        if self.note:
            out["note"] = self.note
        return out | self.extra


def correlate(design: Design, human: np.ndarray, metric: np.ndarray, draws: Draws, config: BootConfig,
              *, metric_name: str = "metric", dimension: str = "", ceilings: dict | None = None) -> list[Figure]:
    """Figures at each configured level. `human` is items × raters (NaN = not rated), `metric` per item.
    `ceilings` (from `human_ceilings`) saves recomputing them for every metric of a dimension."""
    h = _mean_rows(human)
    ceilings = ceilings if ceilings is not None else human_ceilings(design, human, draws, config)
    out = []
    for lvl in config.levels:
        fig = _LEVEL_FN[lvl](design, h, metric, draws, config)
        fig.metric, fig.dimension, fig.ceiling = metric_name, dimension, ceilings[lvl]
        fig.verdict = verdict(fig)
        out.append(fig)
    return out


def human_ceilings(design: Design, human: np.ndarray, draws: Draws, config: BootConfig) -> dict:
    return {lvl: human_ceiling(design, human, lvl, draws, config) for lvl in config.levels}


def human_ceiling(design: Design, human: np.ndarray, level: str, draws: Draws, config: BootConfig) -> dict | None:
    """Leave-one-rater-out Spearman at `level`, averaged over raters; None with fewer than two raters."""
    if human.shape[1] < 2:
        return None
    point, boot = [], []
    for r in range(human.shape[1]):
        others = _mean_rows(np.delete(human, r, axis=1))
        fig = _LEVEL_FN[level](design, others, human[:, r], draws, config, keep_draws=True)
        point.append(fig.values[HEADLINE])
        boot.append(fig.extra.pop("draws")[HEADLINE])
    point = [p for p in point if p is not None]
    if not point:
        return None
    stacked = np.stack(boot)
    counted = np.isfinite(stacked).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        draws_mean = np.where(counted > 0, np.nansum(stacked, axis=0) / np.maximum(counted, 1), np.nan)
    return {"value": float(np.mean(point)), "ci": _interval(draws_mean, config)}


def verdict(fig: Figure) -> str:
    """Plain words from the headline statistic's interval, compared with the ceiling's interval."""
    v, ci = fig.values.get(HEADLINE), fig.ci.get(HEADLINE)
    where = f"{fig.level} level"
    if v is None:
        return f"cannot be judged at {where}: {fig.note or 'no correlation could be computed'}"
    said = f"{HEADLINE} {v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
    if ci is None:
        return f"no interval at {where} (too many degenerate resamples); {said}"
    top = fig.ceiling
    if top is not None and top["value"] is not None and top["value"] <= 0:
        return f"cannot be validated at {where}: the humans themselves do not agree ({said})"
    if ci[1] < 0:
        return f"disagrees with humans at {where}: the correlation is negative ({said})"
    if ci[0] <= 0:
        return f"no reliable agreement with humans at {where}: the interval includes zero ({said})"
    if top is None or top["ci"] is None:
        return f"agrees with humans at {where} (no human–human ceiling: one rater per item) ({said})"
    ceil = f"human–human {top['value']:.2f} [{top['ci'][0]:.2f}, {top['ci'][1]:.2f}]"
    if ci[1] < top["ci"][0]:
        return f"agrees with humans at {where}, but credibly less than humans agree with each other ({said} vs {ceil})"
    return f"agrees with humans at {where} about as well as humans agree with each other ({said} vs {ceil})"


def short_verdict(text: str) -> str:
    """The verdict's first words, for narrow tables: 'agrees', 'no reliable agreement', ..."""
    head = text.split(" (")[0]
    for long, short in ((" at item level", ""), (" at input level", ""), (" at system level", ""),
                        ("agrees with humans about as well as humans agree with each other", "agrees, as humans do"),
                        ("agrees with humans, but credibly less than humans agree with each other",
                         "agrees, below humans"),
                        ("no reliable agreement with humans: the interval includes zero", "no reliable agreement"),
                        ("disagrees with humans: the correlation is negative", "disagrees (negative)")):
        head = head.replace(long, short)
    return head


# -- the three levels ------------------------------------------------------------------
def _item_level(design, h, x, draws, config, keep_draws=False) -> Figure:
    ok = ~np.isnan(h) & ~np.isnan(x)
    xv, hv, groups = x[ok], h[ok], design.input_of[ok]
    note = _degenerate(xv, hv, "items")
    fig = Figure("", "", "item", int(ok.sum()), {}, {}, note=note)
    if note:
        return _finish(fig, {s: None for s in STATS}, None, config, keep_draws)
    point = {s: float(v[0]) for s, v in _shared(xv, hv, np.ones((1, len(design.inputs))), groups).items()}
    boot = _shared(xv, hv, draws.inputs, groups)
    return _finish(fig, point, boot, config, keep_draws)


def _input_level(design, h, x, draws, config, keep_draws=False) -> Figure:
    X, H, M = _by_input(design, x, h)
    n_pts = M.sum(1)
    const_h = _constant_rows(H, M)
    const_x = _constant_rows(X, M)
    few = n_pts < 2
    valid = ~few & ~const_h & ~const_x
    why = {"too_few_systems": int(few.sum()), "constant_humans": int((~few & const_h).sum()),
           "constant_metric": int((~few & ~const_h & const_x).sum())}
    fig = Figure("", "", "input", int(valid.sum()), {}, {}, skipped_inputs=int((~valid).sum()),
                 skipped_why={k: v for k, v in why.items() if v})
    if valid.sum() == 0:
        fig.note = "every input was skipped (constant scores or fewer than two systems per input)"
        return _finish(fig, {s: None for s in STATS}, None, config, keep_draws)
    per = _rowwise(X[valid], H[valid], M[valid])             # stat -> per-input correlation
    point = {s: float(np.mean(v)) for s, v in per.items()}
    w = draws.inputs[:, valid]
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = {s: (w @ v) / w.sum(1) for s, v in per.items()}
    return _finish(fig, point, boot, config, keep_draws)


def _system_level(design, h, x, draws, config, keep_draws=False) -> Figure:
    ok = ~np.isnan(h) & ~np.isnan(x)
    hv, xv = np.where(ok, h, 0.0), np.where(ok, x, 0.0)
    # Per (input, system) sums, so a resample of inputs gives the system means by one small product.
    shape = (len(design.inputs), len(design.systems))
    cell = [np.zeros(shape) for _ in range(3)]
    for c, v in zip(cell, (ok.astype(float), xv, hv)):
        np.add.at(c, (design.input_of, design.system_of), v)

    def means(w_inputs):
        cnt = w_inputs @ cell[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            return w_inputs @ cell[1] / cnt, w_inputs @ cell[2] / cnt, cnt > 0

    mx, mh, present = means(np.ones((1, shape[0])))
    fig = Figure("", "", "system", int(present.sum()), {}, {})
    fig.note = _degenerate(mx[present], mh[present], "systems", minimum=3)
    if fig.note:
        return _finish(fig, {s: None for s in STATS}, None, config, keep_draws)
    point = {s: float(v[0]) for s, v in _rowwise(np.nan_to_num(mx), np.nan_to_num(mh), present.astype(float)).items()}
    bx, bh, bpresent = means(draws.inputs)
    wsys = bpresent * (draws.systems if draws.systems is not None else 1.0)
    boot = _rowwise(np.nan_to_num(bx), np.nan_to_num(bh), wsys.astype(float))
    return _finish(fig, point, boot, config, keep_draws)


_LEVEL_FN = {"item": _item_level, "input": _input_level, "system": _system_level}


def _finish(fig: Figure, point: dict, boot: dict | None, config: BootConfig, keep_draws: bool) -> Figure:
    fig.values = point
    fig.ci = {s: (None if boot is None or point[s] is None else _interval(boot[s], config)) for s in STATS}
    if keep_draws:
        n = config.n_boot
        fig.extra["draws"] = boot if boot is not None else {s: np.full(n, np.nan) for s in STATS}
    return fig


def _interval(draws: np.ndarray, config: BootConfig) -> list[float] | None:
    good = draws[np.isfinite(draws)]
    # With most resamples degenerate the interval would describe a different population.
    if len(good) < max(2, 0.5 * len(draws)):
        return None
    tail = (1 - config.confidence) / 2 * 100
    lo, hi = np.percentile(good, [tail, 100 - tail])
    return [float(lo), float(hi)]


def _degenerate(x: np.ndarray, h: np.ndarray, what: str, minimum: int = 3) -> str | None:
    if len(x) < minimum:
        return f"only {len(x)} {what} with both a human and a metric score (need {minimum})"
    if np.ptp(x) == 0:
        return f"the metric is constant on these {what} (every value {x[0]:g})"
    if np.ptp(h) == 0:
        return f"the human scores are constant on these {what} (every value {h[0]:g})"
    return None


# -- weighted statistics: all resamples at once ------------------------------------------
def _shared(x: np.ndarray, y: np.ndarray, wg: np.ndarray, group_of: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Pearson, Spearman, Kendall tau-b of (x, y) under each row of integer weights.

    `wg` (R × G) weighs groups of items (`group_of` maps item -> group): a resample draws whole
    inputs, so sums over items collapse to sums over inputs first. Without `group_of`, `wg` weighs
    the items themselves (R × n).
    """
    if group_of is None:
        return {"pearson": _pearson(x, y, wg),
                "spearman": _pearson(_midranks_shared(x, wg), _midranks_shared(y, wg), wg),
                "kendall": _kendall_items(x, y, wg)}
    onehot = np.zeros((len(x), wg.shape[1]))
    onehot[np.arange(len(x)), group_of] = 1.0
    w = wg[:, group_of]
    return {"pearson": _pearson_grouped(x, y, wg, onehot),
            "spearman": _pearson(_midranks_shared(x, w), _midranks_shared(y, w), w),
            "kendall": _kendall_grouped(x, y, wg, w, onehot)}


def _pearson_grouped(x, y, wg, onehot) -> np.ndarray:
    # Weighted moments from per-group sums; centring first keeps the moment formula accurate.
    x, y = x - x.mean(), y - y.mean()
    n, sx, sy, sxx, syy, sxy = (wg @ (onehot.T @ v) for v in (np.ones_like(x), x, y, x * x, y * y, x * y))
    with np.errstate(invalid="ignore", divide="ignore"):
        vx, vy = n * sxx - sx * sx, n * syy - sy * sy
        r = (n * sxy - sx * sy) / np.sqrt(vx * vy)
    r[(vx <= 1e-10 * n * sxx) | (vy <= 1e-10 * n * syy)] = np.nan     # a constant resample
    return np.clip(r, -1.0, 1.0)


def _rowwise(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """The same for a different (short) x, y per row: R × k arrays, used per input and per system set."""
    x, y = np.broadcast_to(x, w.shape), np.broadcast_to(y, w.shape)
    return {"pearson": _pearson(x, y, w),
            "spearman": _pearson(_midranks_rows(x, w), _midranks_rows(y, w), w),
            "kendall": _kendall_rows(x, y, w)}


def _pearson(x, y, w) -> np.ndarray:
    sw = w.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = x - (w * x).sum(-1, keepdims=True) / sw
        dy = y - (w * y).sum(-1, keepdims=True) / sw
        vx, vy = (w * dx * dx).sum(-1), (w * dy * dy).sum(-1)
        r = (w * dx * dy).sum(-1) / np.sqrt(vx * vy)
    # Rounding leaves a constant resample with a variance ~1e-32 of its second moment: undefined.
    r[(vx <= 1e-24 * (w * x * x).sum(-1)) | (vy <= 1e-24 * (w * y * y).sum(-1))] = np.nan
    return np.clip(r, -1.0, 1.0)


def _midranks_shared(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Average rank of each item within each weighted resample (ties share their mean rank)."""
    _, inv = np.unique(x, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    g = np.add.reduceat(w[:, order], starts, axis=1)          # weight per distinct value
    below = np.cumsum(g, axis=1) - g
    return (below + (g + 1) / 2)[:, inv]


def _midranks_rows(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    below = np.einsum("rij,rj->ri", (x[:, None, :] < x[:, :, None]).astype(float), w)
    same = np.einsum("rij,rj->ri", (x[:, None, :] == x[:, :, None]).astype(float), w)
    return below + (same + 1) / 2


def _kendall_grouped(x, y, wg, w, onehot) -> np.ndarray:
    # ½·wᵀSw with w constant within a group equals ½·wgᵀ(PᵀSP)wg: the n × n sign matrix is
    # folded to groups × groups once (sums over sorted runs), then every resample is a small product.
    group_of = onehot.argmax(1)
    order = np.argsort(group_of, kind="stable")
    xs, ys, gs = x[order], y[order], group_of[order]
    present, starts = np.unique(gs, return_index=True)
    n = len(x)
    folded_rows = np.empty((n, len(present)))
    step = max(1, int(4e6 // max(n, 1)))                       # bound the step × n sign block in memory
    for a in range(0, n, step):
        b = min(n, a + step)
        sign = np.sign(xs[a:b, None] - xs[None, :]) * np.sign(ys[a:b, None] - ys[None, :])
        folded_rows[a:b] = np.add.reduceat(sign, starts, axis=1)
    folded = np.zeros((wg.shape[1], wg.shape[1]))
    folded[np.ix_(present, present)] = np.add.reduceat(folded_rows, starts, axis=0)
    concord = ((wg @ folded) * wg).sum(1) / 2
    return _tau_b(concord, w, _tie_sq_shared(x, w), _tie_sq_shared(y, w))


def _kendall_items(x, y, w) -> np.ndarray:
    """½·wᵀSw per row of item weights, S_ij = sign(x_i − x_j)·sign(y_i − y_j), in column blocks."""
    n = len(x)
    concord = np.zeros(w.shape[0])
    step = max(1, int(4e6 // max(n, 1)))
    for a in range(0, n, step):
        b = min(n, a + step)
        sign = np.sign(x[:, None] - x[None, a:b]) * np.sign(y[:, None] - y[None, a:b])
        concord += ((w @ sign) * w[:, a:b]).sum(1)
    return _tau_b(concord / 2, w, _tie_sq_shared(x, w), _tie_sq_shared(y, w))


def _kendall_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    s = np.sign(x[:, :, None] - x[:, None, :]) * np.sign(y[:, :, None] - y[:, None, :])
    concord = np.einsum("ri,rij,rj->r", w, s, w) / 2
    tx = np.einsum("ri,rij,rj->r", w, (x[:, :, None] == x[:, None, :]).astype(float), w)
    ty = np.einsum("ri,rij,rj->r", w, (y[:, :, None] == y[:, None, :]).astype(float), w)
    return _tau_b(concord, w, tx, ty)


def _tie_sq_shared(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ over distinct values of (total weight at that value)²."""
    _, inv = np.unique(x, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    g = np.add.reduceat(w[:, order], starts, axis=1)
    return (g * g).sum(1)


def _tau_b(concord_minus_discord, w, tie_sq_x, tie_sq_y) -> np.ndarray:
    # Pairs among N weighted points: N(N-1)/2; pairs tied in x: (Σ g² − N)/2 (copies of one item tie).
    total = w.sum(1)
    pairs = total * (total - 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt((pairs - (tie_sq_x - total) / 2) * (pairs - (tie_sq_y - total) / 2))
        tau = concord_minus_discord / denom
    tau[~(denom > 0)] = np.nan
    return np.clip(tau, -1.0, 1.0)


# -- layout helpers -------------------------------------------------------------------
def _by_input(design: Design, x: np.ndarray, h: np.ndarray):
    """inputs × slots arrays of metric, human and a presence mask (slots: the systems that answered)."""
    ok = ~np.isnan(h) & ~np.isnan(x)
    n_in = len(design.inputs)
    idx = np.flatnonzero(ok)
    g = design.input_of[idx]
    order = np.argsort(g, kind="stable")
    idx, g = idx[order], g[order]
    first = np.searchsorted(g, g)                       # where this input's run starts
    slot = np.arange(len(g)) - first
    k = int(slot.max()) + 1 if len(slot) else 1
    X, H, M = np.zeros((n_in, k)), np.zeros((n_in, k)), np.zeros((n_in, k))
    X[g, slot], H[g, slot], M[g, slot] = x[idx], h[idx], 1.0
    return X, H, M


def _constant_rows(v: np.ndarray, m: np.ndarray) -> np.ndarray:
    hi = np.where(m > 0, v, -np.inf).max(1)
    lo = np.where(m > 0, v, np.inf).min(1)
    return ~(hi > lo)


def _mean_rows(m: np.ndarray) -> np.ndarray:
    cnt = (~np.isnan(m)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.nansum(m, axis=1) / np.maximum(cnt, 1), np.nan)


def fmt(value: float | None, ci: list[float] | None) -> str:
    """`0.71 [0.55, 0.83]`, or `–` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
