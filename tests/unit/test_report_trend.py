"""``linear_trend``: the change over a run of a least-squares line, with its standard error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.reporting.tables import linear_trend


def test_hand_computed_line():
    # values 1, 3, 2 at steps 0, 1, 2: slope 0.5, fitted 1.5, 2, 2.5, residuals -0.5, 1, -0.5;
    # residual variance 1.5 / 1, slope SE sqrt(1.5 / 2); over 2 steps: change 1, SE 2 sqrt(0.75).
    change, change_se = linear_trend(np.array([0, 1, 2]), np.array([1.0, 3.0, 2.0]))
    assert change == pytest.approx(1.0)
    assert change_se == pytest.approx(2 * math.sqrt(0.75))


def test_agrees_with_scipy_linregress():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    steps = np.arange(3, 40)
    values = 0.01 * steps + rng.normal(0, 0.1, len(steps))
    fit = stats.linregress(steps, values)
    change, change_se = linear_trend(steps, values)
    span = steps[-1] - steps[0]
    assert change == pytest.approx(fit.slope * span)
    assert change_se == pytest.approx(fit.stderr * span)


def test_exact_line_has_zero_error_and_short_runs_give_nan():
    change, change_se = linear_trend(np.arange(5), 2.0 - 0.25 * np.arange(5))
    assert change == pytest.approx(-1.0) and change_se == pytest.approx(0.0, abs=1e-12)
    assert all(math.isnan(v) for v in linear_trend(np.arange(2), np.ones(2)))


def test_stability_table_reports_the_mixed_reward_and_each_reward():
    import pandas as pd

    from pipeline.reporting.tables import stability_table

    iterations = np.arange(8)
    metrics = pd.DataFrame(
        {
            "iteration": iterations,
            "reward_mixed": 1.0 + 0.1 * iterations,  # an exact line: change 0.7, no error
            "ocr_mean": np.full(8, 0.5),
            "ocr_std": np.full(8, 0.2),
            "zero_variance_groups": np.zeros(8),
        }
    )
    probe = pd.DataFrame({"iteration": [0, 8], "reward_mixed": [1.0, 1.2], "ocr_mean": [0.5, 0.6]})
    row = stability_table({"m": metrics}, {"m": probe}, ["ocr"]).iloc[0]
    assert row["mixed_trend"] == pytest.approx(0.7) and row["mixed_trend_se"] == pytest.approx(0.0, abs=1e-12)
    assert row["mixed_start"] == pytest.approx(1.05) and row["mixed_end"] == pytest.approx(1.65)
    assert (row["probe_mixed_start"], row["probe_mixed_end"]) == (1.0, 1.2)
    assert row["ocr_trend"] == pytest.approx(0.0) and row["ocr_within_group_std"] == pytest.approx(0.2)


def test_paired_table_differences_per_image_with_standard_error():
    import pandas as pd

    from pipeline.reporting.tables import paired_table

    base = pd.DataFrame({"model": "base", "line_id": [0, 1, 2], "seed": 0, "ocr": [0.2, 0.5, 0.9]})
    # Per image +0.1, +0.3, -0.1 (line 3 has no base image and is left out): mean 0.1,
    # sample std 0.2, SE 0.2 / sqrt(3).
    tuned = pd.DataFrame({"model": "tuned", "line_id": [0, 1, 2, 3], "seed": 0, "ocr": [0.3, 0.8, 0.8, 1.0]})
    row = paired_table(pd.concat([base, tuned])).iloc[0]
    assert row["model"] == "tuned" and row["images"] == 3
    assert row["ocr_diff"] == pytest.approx(0.1)
    assert row["ocr_diff_se"] == pytest.approx(0.2 / math.sqrt(3))
