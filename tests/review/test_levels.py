"""Item-, input- and system-level correlations and their bootstrap, against scipy on the same vectors."""

import numpy as np
import pytest
from scipy import stats

from tunelab.review.levels import BootConfig, Design, Draws, _rowwise, _shared, correlate

SCIPY = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}


def _design(n_inputs=12, n_systems=6, seed=0, raters=1, signal=1.0):
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=n_systems)
    ins = [f"in{i}" for i in range(n_inputs) for _ in range(n_systems)]
    sys_ = [f"s{s}" for _ in range(n_inputs) for s in range(n_systems)]
    truth = np.tile(quality, n_inputs) + rng.normal(size=n_inputs * n_systems)
    human = np.clip(np.round(truth[:, None] + rng.normal(scale=0.7, size=(len(truth), raters)) + 3), 1, 5)
    metric = signal * truth + rng.normal(size=len(truth))
    ids = [f"i{k}" for k in range(len(truth))]
    return Design.build(ids, ins, sys_), human, metric


def test_weighted_statistics_equal_scipy_on_expanded_resamples():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 6, 50).astype(float)          # many ties, as with rating scales
    y = x + rng.integers(-2, 3, 50)
    w = rng.multinomial(50, np.full(50, 1 / 50), size=8).astype(float)
    got = _shared(x, y, w)
    for b in range(8):
        xx, yy = np.repeat(x, w[b].astype(int)), np.repeat(y, w[b].astype(int))
        for name, f in SCIPY.items():
            assert got[name][b] == pytest.approx(f(xx, yy).statistic, abs=1e-12)
    X, Y = rng.integers(0, 4, (20, 6)).astype(float), rng.integers(0, 4, (20, 6)).astype(float)
    W = rng.integers(1, 3, (20, 6)).astype(float)
    got = _rowwise(X, Y, W)
    for r in range(20):
        xx, yy = np.repeat(X[r], W[r].astype(int)), np.repeat(Y[r], W[r].astype(int))
        if np.ptp(xx) and np.ptp(yy):
            for name, f in SCIPY.items():
                assert got[name][r] == pytest.approx(f(xx, yy).statistic, abs=1e-12)
        else:
            assert np.isnan(got["pearson"][r])


def test_three_levels_equal_scipy():
    design, human, metric = _design()
    h = human[:, 0]
    cfg = BootConfig(n_boot=200)
    figs = {f.level: f for f in correlate(design, human, metric, Draws.make(design, cfg), cfg, metric_name="m")}
    for name, f in SCIPY.items():
        assert figs["item"].values[name] == pytest.approx(f(metric, h).statistic, abs=1e-12)
        per_input, skipped = [], 0
        for g in range(len(design.inputs)):
            sel = design.input_of == g
            if np.ptp(h[sel]) == 0 or np.ptp(metric[sel]) == 0:
                skipped += 1
                continue
            per_input.append(f(metric[sel], h[sel]).statistic)
        assert figs["input"].values[name] == pytest.approx(np.mean(per_input), abs=1e-12)
        assert figs["input"].skipped_inputs == skipped
        mx = [metric[design.system_of == s].mean() for s in range(len(design.systems))]
        mh = [h[design.system_of == s].mean() for s in range(len(design.systems))]
        assert figs["system"].values[name] == pytest.approx(f(mx, mh).statistic, abs=1e-12)
    assert figs["item"].n == len(h) and figs["system"].n == 6
    for fig in figs.values():
        lo, hi = fig.ci["spearman"]
        assert lo <= fig.values["spearman"] <= hi


def test_constant_inputs_are_skipped_and_counted():
    design, human, metric = _design(n_inputs=6)
    human[design.input_of == 0] = 3.0          # humans constant on input 0
    metric[design.input_of == 1] = 0.5         # metric constant on input 1
    cfg = BootConfig(n_boot=50, levels=("input",))
    (fig,) = correlate(design, human, metric, Draws.make(design, cfg), cfg)
    assert fig.skipped_inputs == 2 and fig.skipped_why == {"constant_humans": 1, "constant_metric": 1}
    assert fig.n == 4


def test_verdicts_say_what_the_interval_says():
    design, human, metric = _design(n_inputs=30, raters=3, seed=1)
    cfg = BootConfig(n_boot=300)
    draws = Draws.make(design, cfg)

    def verdict(x, level="item"):
        return {f.level: f for f in correlate(design, human, x, draws, cfg)}[level].verdict

    truth_like = human.mean(1) + np.random.default_rng(5).normal(scale=0.2, size=len(human))
    assert verdict(truth_like).startswith("agrees with humans at item level about as well as humans agree")
    assert verdict(-truth_like).startswith("disagrees with humans at item level: the correlation is negative")
    noise = np.random.default_rng(7).normal(size=len(human))
    assert verdict(noise).startswith("no reliable agreement with humans at item level: the interval includes zero")
    constant = np.zeros(len(human))
    assert verdict(constant) == ("cannot be judged at item level: the metric is constant on these items "
                                 "(every value 0)")
    assert draws.systems is not None   # six systems: systems are resampled too


def test_credibly_below_the_ceiling():
    design, human, metric = _design(n_inputs=60, raters=3, seed=2)
    cfg = BootConfig(n_boot=300, levels=("item",))
    weak = human.mean(1) + np.random.default_rng(8).normal(scale=2.5, size=len(human))
    (fig,) = correlate(design, human, weak, Draws.make(design, cfg), cfg)
    assert fig.ci["spearman"][0] > 0 and fig.ci["spearman"][1] < fig.ceiling["ci"][0]
    assert "credibly less than humans agree with each other" in fig.verdict


def test_tiny_but_real_variation_is_not_called_constant():
    x = 0.9 + 1e-6 * np.arange(10.0)        # cosine similarities that differ in the sixth decimal
    y = np.arange(10.0)
    got = _shared(x, y, np.ones((1, 10)))
    assert got["pearson"][0] == pytest.approx(1.0) and got["spearman"][0] == pytest.approx(1.0)
    assert np.isnan(_shared(np.full(10, 0.3), y, np.ones((1, 10)))["pearson"][0])
    assert np.isnan(_rowwise(np.full((1, 10), 0.3), y[None], np.ones((1, 10)))["pearson"][0])
