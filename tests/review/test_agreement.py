"""Agreement figures against scipy / scikit-learn / krippendorff called directly, and by hand."""

import itertools
import krippendorff
import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, cohen_kappa_score

from tunelab.review.agreement import AgreementConfig, AutoScore, agreement, fleiss_kappa
from tunelab.review.store import Rating

FAST = AgreementConfig(n_boot=60, seed=1, scale=(1, 5))


def _ratings(matrix, raters, dim="q"):
    return [Rating(f"i{i}", raters[j], dim, float(v)) for i, row in enumerate(matrix)
            for j, v in enumerate(row) if not np.isnan(v)]


def test_two_raters_worked_by_hand():
    # 10 items, yes(1)/no(2). Table (rows rater a, columns rater b):
    #            b=1  b=2
    #   a=1       4    1      a: 5 ones, 5 twos
    #   a=2       2    3      b: 6 ones, 4 twos
    # observed agreement p_o = (4+3)/10 = 0.7
    # chance agreement  p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = [1, 1, 1, 1, 1, 2, 2, 2, 2, 2]
    b = [1, 1, 1, 1, 2, 1, 1, 2, 2, 2]
    rep = agreement(_ratings(np.array([a, b], float).T, ["a", "b"]), config=AgreementConfig(n_boot=50))["q"]
    assert rep["n_items"] == 10 and rep["n_raters"] == 2
    assert rep["percent_agreement"]["value"] == pytest.approx(0.7)
    assert rep["cohen_kappa"]["a|b"]["unweighted"]["value"] == pytest.approx(0.4)
    # With two categories every weighting gives the same kappa.
    assert rep["cohen_kappa"]["a|b"]["quadratic"]["value"] == pytest.approx(0.4)
    # Fleiss' kappa for 2 raters: p_bar = 0.7, category shares 11/20 and 9/20,
    # p_e = 0.55^2 + 0.45^2 = 0.505 -> (0.7 - 0.505) / 0.495 = 0.3939...
    assert rep["fleiss_kappa"]["value"] == pytest.approx(0.195 / 0.495)


def test_fleiss_published_example():
    # Fleiss (1971) as reproduced on Wikipedia "Fleiss' kappa": 10 subjects, 14 raters, 5 categories, kappa 0.210.
    counts = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                       [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(counts) == pytest.approx(0.2099, abs=1e-4)


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(7)
    truth = rng.integers(1, 6, size=30)
    m = np.clip(truth[:, None] + rng.integers(-1, 2, size=(30, 3)), 1, 5).astype(float)
    m[rng.random(m.shape) < 0.15] = np.nan  # missing ratings are allowed
    return truth, m


def test_inter_rater_matches_libraries(noisy):
    _, m = noisy
    raters = ["ann", "bob", "cy"]
    rep = agreement(_ratings(m, raters), config=FAST)["q"]
    for (i, a), (j, b) in itertools.combinations(enumerate(raters), 2):
        both = ~np.isnan(m[:, i]) & ~np.isnan(m[:, j])
        for name, w in (("unweighted", None), ("linear", "linear"), ("quadratic", "quadratic")):
            want = cohen_kappa_score(m[both, i], m[both, j], labels=[1, 2, 3, 4, 5], weights=w)
            assert rep["cohen_kappa"][f"{a}|{b}"][name]["value"] == pytest.approx(want)
    for level in ("nominal", "ordinal", "interval"):
        want = krippendorff.alpha(reliability_data=m.T, level_of_measurement=level, value_domain=[1, 2, 3, 4, 5])
        assert rep["krippendorff_alpha"][level]["value"] == pytest.approx(want)
    for fig in [rep["percent_agreement"], rep["fleiss_kappa"], *rep["krippendorff_alpha"].values()]:
        assert fig["ci_low"] <= fig["value"] <= fig["ci_high"]


def test_automated_matches_scipy_and_sklearn(noisy):
    truth, m = noisy
    rng = np.random.default_rng(3)
    metric = truth + rng.normal(0, 1.0, size=len(truth))
    passed = metric >= 3
    scores = [AutoScore(f"i{i}", "rouge", float(v)) for i, v in enumerate(metric)]
    scores += [AutoScore(f"i{i}", "judge_ok", bool(v)) for i, v in enumerate(passed)]
    rep = agreement(_ratings(m, ["ann", "bob", "cy"]), scores, FAST)["q"]["automated"]
    human = np.nanmean(m, axis=1)
    for name, f in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau), ("pearson", stats.pearsonr)):
        assert rep["rouge"][name]["value"] == pytest.approx(f(metric, human).statistic)
    assert rep["judge_ok"]["kind"] == "pass_fail"
    assert rep["judge_ok"]["cohen_kappa"]["value"] == pytest.approx(cohen_kappa_score(passed, human >= 3))
    assert rep["judge_ok"]["accuracy"]["value"] == pytest.approx(accuracy_score(passed, human >= 3))
    assert "verdict" in rep["rouge"] and set(rep["rouge"]["human_ceiling"]) == {"spearman", "kendall", "pearson"}


def test_pairwise_judge_against_human_majority():
    prefs = [["A", "A", "B"], ["B", "B", "B"], ["tie", "A", "tie"], ["A", "B", "tie"], ["B", "B", "A"],
             ["A", "A", "A"], ["tie", "tie", "B"], ["B", "A", "B"]]
    # Majority by hand (a three-way split counts as a tie):
    majority = ["A", "B", "tie", "tie", "B", "A", "tie", "B"]
    judge = ["A", "B", "A", "tie", "B", "A", "B", "B"]
    ratings = [Rating(f"i{i}", r, "pref", preference=p) for i, row in enumerate(prefs)
               for r, p in zip(["x", "y", "z"], row)]
    scores = [AutoScore(f"i{i}", "judge", v) for i, v in enumerate(judge)]
    rep = agreement(ratings, scores, AgreementConfig(n_boot=50))["pref"]
    j = rep["automated"]["judge"]
    assert j["kind"] == "pairwise"
    assert j["accuracy"]["value"] == pytest.approx(6 / 8)
    assert j["cohen_kappa"]["value"] == pytest.approx(cohen_kappa_score(judge, majority))


def test_verdicts_separate_good_and_useless_metrics(noisy):
    truth, m = noisy
    rng = np.random.default_rng(0)
    human = np.nanmean(m, axis=1)
    scores = [AutoScore(f"i{i}", "oracle", float(v)) for i, v in enumerate(human)]
    scores += [AutoScore(f"i{i}", "noise", float(v)) for i, v in enumerate(rng.normal(size=len(human)))]
    auto = agreement(_ratings(m, ["ann", "bob", "cy"]), scores, AgreementConfig(n_boot=200, scale=(1, 5)))["q"]["automated"]
    assert auto["oracle"]["verdict"].startswith("agrees with humans about as well")
    assert auto["noise"]["verdict"].startswith("no reliable agreement")


def test_json_shape_and_determinism(noisy):
    _, m = noisy
    ratings = _ratings(m, ["ann", "bob", "cy"])
    a, b = agreement(ratings, config=FAST), agreement(ratings, config=FAST)
    assert a == b
    q = a["q"]
    assert set(q) >= {"n_items", "n_raters", "percent_agreement", "cohen_kappa", "fleiss_kappa",
                      "krippendorff_alpha", "automated"}
    assert set(q["cohen_kappa"]) == {"ann|bob", "ann|cy", "bob|cy"}
    assert set(q["percent_agreement"]) == {"value", "ci_low", "ci_high"}


def test_degenerate_input_gives_nulls_not_errors():
    ratings = [Rating("i0", "a", "q", 3.0), Rating("i0", "b", "q", 3.0)]
    q = agreement(ratings, config=AgreementConfig(n_boot=20))["q"]
    assert q["percent_agreement"]["value"] == 1.0
    assert q["cohen_kappa"] == {}  # one shared item: kappa undefined
    assert q["krippendorff_alpha"]["nominal"] == {"value": None, "ci_low": None, "ci_high": None}


def test_verdicts_compare_intervals_and_name_negative_and_constant_metrics():
    from tunelab.review.agreement import verdict

    ceiling = {"value": 0.15, "ci_low": -0.75, "ci_high": 0.77}
    # The case: -0.08 [-0.84, 0.83] against a ceiling of 0.15 is no agreement at all.
    assert verdict("spearman", {"value": -0.08, "ci_low": -0.84, "ci_high": 0.83}, ceiling).startswith(
        "no reliable agreement with humans: the interval includes zero")
    assert verdict("cohen_kappa", {"value": -0.4, "ci_low": -0.7, "ci_high": -0.1}, ceiling).startswith(
        "disagrees with humans: the agreement is negative")
    strong = {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}
    assert verdict("spearman", {"value": 0.3, "ci_low": 0.1, "ci_high": 0.5}, strong).startswith(
        "agrees with humans, but credibly less than humans agree with each other")
    assert verdict("spearman", {"value": 0.6, "ci_low": 0.4, "ci_high": 0.75}, strong).startswith(
        "agrees with humans about as well as humans agree with each other")


def test_a_constant_metric_is_called_constant(noisy):
    _, m = noisy
    ratings = _ratings(m, ["ann", "bob", "cy"])
    flat = [AutoScore(f"i{i}", "exact_match", 0.0) for i in range(len(m))]
    got = agreement(ratings, flat, FAST)["q"]["automated"]["exact_match"]["verdict"]
    assert got == "cannot be judged: the automated score is constant on these items (every value 0)"


def test_vectorised_kappa_and_accuracy_equal_sklearn_on_each_resample():
    from tunelab.review.agreement import accuracy_w, kappa_w

    rng = np.random.default_rng(11)
    a = rng.integers(1, 6, 40).astype(float)
    b = np.clip(a + rng.integers(-1, 2, 40), 1, 5).astype(float)
    a[3], b[7] = np.nan, np.nan                     # unrated items drop out
    W = rng.multinomial(40, np.full(40, 1 / 40), size=6).astype(float)
    ok = ~np.isnan(a) & ~np.isnan(b)
    for name, w in (("unweighted", None), ("linear", "linear"), ("quadratic", "quadratic")):
        got = kappa_w(a, b, [1, 2, 3, 4, 5], w, W)
        for r in range(6):
            aa, bb = np.repeat(a[ok], W[r, ok].astype(int)), np.repeat(b[ok], W[r, ok].astype(int))
            assert got[r] == pytest.approx(cohen_kappa_score(aa, bb, labels=[1, 2, 3, 4, 5], weights=w), abs=1e-12)
    acc = accuracy_w(a, b, W)
    for r in range(6):
        aa, bb = np.repeat(a[ok], W[r, ok].astype(int)), np.repeat(b[ok], W[r, ok].astype(int))
        assert acc[r] == pytest.approx(accuracy_score(aa, bb))
