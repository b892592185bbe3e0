"""Intervals and paired tests against hand computations and textbook values."""

import math

import pytest
import torch

import lensteer
from lensteer.core.stats import bootstrap_mean_ci, mcnemar_exact, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (0, 16, 0.0, 0.1936),  # z^2 / (n + z^2): not the bootstrap's degenerate [0, 0]
        (16, 16, 0.8064, 1.0),
        (8, 16, 0.2800, 0.7200),
        (81, 96, 0.7585, 0.9030),  # Newcombe (1998) method 3, computed by hand
    ],
)
def test_wilson_interval_matches_hand_computation(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=5e-4) and hi == pytest.approx(high, abs=5e-4)


def test_wilson_interval_narrows_with_n_and_rejects_impossible_counts():
    assert (
        wilson_interval(48, 96)[1] - wilson_interval(48, 96)[0]
        < wilson_interval(8, 16)[1] - wilson_interval(8, 16)[0]
    )
    for k, n in ((5, 4), (-1, 4), (0, 0)):
        with pytest.raises(lensteer.DataError, match="0 <= successes <= n"):
            wilson_interval(k, n)


def test_mcnemar_exact_is_the_two_sided_binomial_tail_of_the_discordant_pairs():
    a = [True] * 8 + [False] * 2 + [True] * 20 + [False] * 10
    b = [False] * 8 + [True] * 2 + [True] * 20 + [False] * 10
    test = mcnemar_exact(a, b)
    assert (test.a_only, test.b_only, test.n) == (8, 2, 40)
    assert test.p_value == pytest.approx(2 * (1 + 10 + 45) / 2**10)  # 0.109: not significant
    assert not test.significant() and test.difference == pytest.approx(6 / 40)
    assert mcnemar_exact(b, a).p_value == test.p_value and mcnemar_exact(b, a).difference == -test.difference


def test_mcnemar_exact_edge_cases():
    assert mcnemar_exact([True, False], [True, False]).p_value == 1.0  # no discordant pair
    assert mcnemar_exact([True] * 10, [False] * 10).p_value == pytest.approx(2 / 2**10)
    assert mcnemar_exact([True] * 6, [False] * 6).significant()
    with pytest.raises(lensteer.DataError, match="equally long"):
        mcnemar_exact([True], [True, False])


def test_bootstrap_mean_ci_brackets_the_mean_and_is_seeded():
    values = torch.arange(20, dtype=torch.float32)
    lo, hi = bootstrap_mean_ci(values, seed=3)
    assert lo < float(values.mean()) < hi and (lo, hi) == bootstrap_mean_ci(values, seed=3)
    assert math.isclose(hi - lo, 2 * 1.96 * float(values.std()) / math.sqrt(20), rel_tol=0.25)


def test_cohen_kappa_against_a_hand_computation():
    from lensteer.core.stats import agreement, cohen_kappa

    labels = [True] * 10 + [False] * 10
    preds = [True] * 8 + [False] * 2 + [True] * 3 + [False] * 7
    # observed 15/20 = 0.75; chance 0.5 * 0.55 + 0.5 * 0.45 = 0.5; kappa = (0.75 - 0.5) / 0.5
    assert cohen_kappa(labels, preds) == pytest.approx(0.5)
    assert cohen_kappa(labels, labels) == 1.0 and cohen_kappa(labels, [not x for x in labels]) == -1.0
    a = agreement(labels, preds)
    assert a.accuracy == 0.75 and a.accuracy_ci == wilson_interval(15, 20)
    assert a.kappa_ci[0] < 0.5 < a.kappa_ci[1]


def test_cohen_kappa_over_three_categories_against_a_hand_computation():
    from lensteer.core.stats import agreement, cohen_kappa

    labels = ["refuses"] * 4 + ["complies"] * 4 + ["neither"] * 2
    preds = ["refuses"] * 3 + ["complies"] * 4 + ["neither"] * 2 + ["refuses"]
    # observed 7/10; chance 0.4 * 0.4 + 0.4 * 0.4 + 0.2 * 0.2 = 0.36; kappa = 0.34 / 0.64
    assert cohen_kappa(labels, preds) == pytest.approx(0.34 / 0.64)
    a = agreement(labels, preds)
    assert a.accuracy == 0.7 and a.accuracy_ci == wilson_interval(7, 10)
    assert (
        cohen_kappa(labels, ["refuses"] * 10) == 0.0
    )  # one rater in one category: no agreement beyond chance


def test_holm_matches_hand_computed_adjustments():
    from lensteer.core.stats import holm

    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.6, 0.7, 0.01]) == pytest.approx([1.0, 1.0, 0.03])  # capped at 1, monotone
    assert holm([0.02]) == [0.02] and holm([]) == []
    with pytest.raises(lensteer.DataError, match=r"\[0, 1\]"):
        holm([0.1, 1.5])
    with pytest.raises(lensteer.DataError, match=r"\[0, 1\]"):
        holm([float("nan")])


def test_paired_permutation_test_finds_a_consistent_shift_and_not_a_symmetric_one():
    from lensteer.core.stats import paired_permutation_test

    b = torch.linspace(-1, 1, 12)
    up = paired_permutation_test(b + 0.5 + 0.1 * torch.arange(12) % 3, b, alternative="greater")
    assert up.n == 12 and up.mean_difference > 0.5 and up.p_value < 0.01 and up.ci[0] > 0
    down = paired_permutation_test(b - 0.5, b, alternative="greater")
    assert down.p_value > 0.99  # the wrong direction is never "greater"
    sym = paired_permutation_test(b + torch.tensor([1.0, -1.0] * 6), b)
    assert sym.mean_difference == pytest.approx(0.0, abs=1e-9) and sym.p_value > 0.9
    assert set(up.to_dict()) == {"n", "mean_difference", "ci", "p_value", "alternative"}
    with pytest.raises(lensteer.DataError, match="equally long"):
        paired_permutation_test(b, b[:3])
    with pytest.raises(lensteer.DataError, match="alternative"):
        paired_permutation_test(b, b, alternative="less")
