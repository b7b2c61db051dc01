"""Outcome measures and the blocked comparison against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.reporting.analysis import (
    block_fit,
    comparisons,
    contrast,
    holm,
    minimum_detectable_effect,
    standardised_gains,
    two_by_two,
    verdict,
)


def test_standardised_gains_by_hand():
    images = pd.DataFrame(
        {
            "model": ["base", "base", "m", "m"],
            "line_id": [0, 1, 0, 1],
            "seed": [0, 0, 0, 0],
            "ocr": [0.2, 0.4, 0.5, 0.5],  # gains 0.3, 0.1
            "color": [0.5, 0.5, 0.3, 0.5],  # gains -0.2, 0.0
        }
    )
    table = standardised_gains(images, {"ocr": 0.1, "color": 0.2}).set_index("model")
    assert table.loc["m", "z_ocr"] == pytest.approx(2.0)  # mean gain 0.2 / 0.1
    assert table.loc["m", "z_color"] == pytest.approx(-0.5)  # -0.1 / 0.2
    # Per image B: (3 - 1) / 2 = 1 and (1 + 0) / 2 = 0.5 -> mean 0.75, se std([1, .5]) / sqrt 2
    assert table.loc["m", "B"] == pytest.approx(0.75)
    assert table.loc["m", "B_se"] == pytest.approx(np.std([1.0, 0.5], ddof=1) / math.sqrt(2))
    assert table.loc["m", "W"] == pytest.approx(-0.5)


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, 2 x 0.02 = 0.04, 1 x 0.04 = 0.04 (monotone)
    adjusted = holm(np.array([0.04, 0.01, np.nan, 0.02]))
    np.testing.assert_allclose(adjusted, [0.04, 0.03, np.nan, 0.04])
    # 2 x 0.5 = 1.0 first, so 0.6 is raised to the running maximum 1.0
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])


def test_block_fit_and_contrast_by_hand():
    """2 seeds x 2 methods: seed means 1 and 1, method means 1.5 and 0.5, grand mean 1, so the
    residuals are +-0.5 and MSE = 4 x 0.25 / 1 df = 1; the difference of the method means
    (1.5 - 0.5 = 1) has se sqrt(1 x 2 / 2) = 1, t = 1 on 1 df."""
    table = pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 0.0]}, index=[0, 1])
    fit = block_fit(table)
    assert (fit.df, fit.seeds) == (1, 2)
    assert fit.mse == pytest.approx(1.0)
    result = contrast(fit, {"a": 1.0, "b": -1.0})
    assert result["estimate"] == pytest.approx(1.0)
    assert result["se"] == pytest.approx(1.0)
    assert result["p"] == pytest.approx(2 * stats.t.sf(1.0, 1))


def test_blocked_difference_equals_a_paired_t_test_for_two_methods():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5), rng.normal(size=5) + 0.3
    fit = block_fit(pd.DataFrame({"a": a, "b": b}))
    result = contrast(fit, {"b": 1.0, "a": -1.0})
    paired = stats.ttest_rel(b, a)
    assert result["t"] == pytest.approx(paired.statistic)
    assert result["p"] == pytest.approx(paired.pvalue)


def test_two_by_two_contrasts():
    design = {"f": (False, False), "g": (False, True), "t": (True, False), "tg": (True, True)}
    effects = two_by_two(design)
    means = {"f": 1.0, "g": 2.0, "t": 4.0, "tg": 7.0}
    value = {name: sum(c * means[m] for m, c in coef.items()) for name, coef in effects.items()}
    # tree: (4 + 7)/2 - (1 + 2)/2 = 4; grouping: (2 + 7)/2 - (1 + 4)/2 = 2; interaction: (7-2)-(4-1) = 2
    assert value == {"tree": 4.0, "grouping": 2.0, "interaction": 2.0}
    assert two_by_two({"f": (False, False), "t": (True, False)}) is None
    assert two_by_two(design | {"f2": (False, False)}) is None


def test_minimum_detectable_effect_by_hand():
    assert minimum_detectable_effect(1.0, 0, 0.05) == pytest.approx(1.959964 + 0.841621, rel=1e-5)
    assert minimum_detectable_effect(0.5, 6, 0.05) == pytest.approx(
        0.5 * (stats.t.ppf(0.975, 6) + stats.t.ppf(0.8, 6))
    )


def _runs(effect: float, seeds: int) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    design = {"flow_grpo": 0.0, "reward_group": 0.0, "tree_grpo": effect, "multi_grpo": effect}
    return pd.DataFrame(
        [
            {"method": m, "seed": s, "B": shift + 0.1 * s + rng.normal(scale=0.05)}
            for s in range(seeds)
            for m, shift in design.items()
        ]
    )


DESIGN = {
    "flow_grpo": (False, False),
    "reward_group": (False, True),
    "tree_grpo": (True, False),
    "multi_grpo": (True, True),
}


def test_comparisons_find_a_planted_tree_effect_and_nothing_else():
    tests = comparisons(_runs(1.0, 4), ["B"], "flow_grpo", DESIGN, 0.05).set_index("comparison")
    assert tests.loc["2x2 tree", "estimate"] == pytest.approx(1.0, abs=0.1)
    assert tests.loc["2x2 tree", "df"] == 9  # (4 - 1) x (4 - 1)
    assert bool(tests.loc["2x2 tree", "significant"])
    assert not bool(tests.loc["2x2 grouping", "significant"])
    assert not bool(tests.loc["reward_group - flow_grpo", "significant"])
    assert (tests["p_holm"] >= tests["p"]).all()
    text = verdict(tests.reset_index(), 4, 3, float("nan"), 0.05)
    assert "2x2 tree on B" in text and "grouping" not in text


def test_verdict_needs_enough_seeds():
    tests = comparisons(_runs(1.0, 2), ["B"], "flow_grpo", DESIGN, 0.05)
    text = verdict(tests, 2, 3, float("nan"), 0.05)
    assert text.startswith("Not enough seeds: 2 per method, a verdict needs 3")
    assert "from the spread across 2 seeds" in text
    one = comparisons(_runs(1.0, 1), ["B"], "flow_grpo", DESIGN, 0.05)
    assert one["p"].isna().all()
    text = verdict(one, 1, 3, 0.1, 0.05)
    expected = minimum_detectable_effect(math.sqrt(2) * 0.1, 0, 0.05)
    assert f"{expected:.2f}" in text and "lower bound" in text


def test_worst_reward_ignores_a_reward_without_scores_in_any_order():
    images = pd.DataFrame(
        {
            "model": ["base", "base", "m", "m"],
            "line_id": [0, 1, 0, 1],
            "seed": [0, 0, 0, 0],
            "ocr": [np.nan] * 4,
            "color": [0.2, 0.4, 0.5, 0.6],  # gains 0.3, 0.2 -> z 2.5 at spread 0.1
        }
    )
    for spreads in ({"ocr": 0.1, "color": 0.1}, {"color": 0.1, "ocr": 0.1}):
        assert standardised_gains(images, spreads).loc[0, "W"] == pytest.approx(2.5)


def test_comparisons_skip_measures_the_runs_lack():
    runs = pd.DataFrame({"method": ["a", "b"], "seed": [0, 0], "trend": [0.1, 0.2]})
    assert comparisons(runs, ["B", "W"], "a", {}, 0.05).empty
