"""Methods compared across training seeds: hand-computed means, errors, NFE and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.seeds import across_seeds, method_table, nfe_to_target, run_table, split_run, verdict

WEIGHTS = {"ocr": 1.0, "color": 1.0, "quality": 0.1}


def test_split_run():
    assert split_run("flow_grpo/seed3") == ("flow_grpo", 3)
    assert split_run("base") == ("base", None)
    assert split_run("odd/seedling") == ("odd/seedling", None)


def test_across_seeds_uses_the_spread_of_the_seeds_or_the_one_runs_error():
    mean, se, source = across_seeds(np.array([1.0, 2.0, 3.0]), np.array([9.0, 9.0, 9.0]))
    assert (mean, source) == (2.0, "seeds") and se == pytest.approx(1 / math.sqrt(3))  # std 1
    assert across_seeds(np.array([0.4, np.nan]), np.array([0.1, 0.2])) == (0.4, 0.1, "one run")
    mean, se, source = across_seeds(np.array([np.nan]), np.array([0.1]))
    assert math.isnan(mean) and source == "none"


def test_nfe_to_target_uses_a_quarter_window_rolling_mean():
    curve = pd.DataFrame({"reward_mixed": [0, 0, 2, 0, 1, 1, 1, 1], "nfe_cumulative": np.arange(1, 9) * 10})
    # window 2: rolling means [-, 0, 1, 1, 0.5, 1, 1, 1]; the first >= 1 is iteration 2
    assert nfe_to_target(curve, 1.0) == 30
    assert math.isnan(nfe_to_target(curve, 1.5))


def _runs(gains: dict[str, list[dict[str, float]]]) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """paired, stability and curve tables for runs with the given per-seed reward gains."""
    paired, stability, curves = [], [], {}
    for method, seeds in gains.items():
        for seed, gain in enumerate(seeds):
            run = f"{method}/seed{seed}"
            mixed = sum(WEIGHTS[name] * value for name, value in gain.items())
            row = {"model": run, "mixed_diff": mixed, "mixed_diff_se": 0.01}
            for name, value in gain.items():
                row |= {f"{name}_diff": value, f"{name}_diff_se": 0.01}
            paired.append(row)
            stability.append({"run": run, "mixed_trend": mixed, "mixed_trend_se": 0.02})
            rewards = np.linspace(1.0, 1.0 + mixed * 4, 8)
            curves[run] = pd.DataFrame({"reward_mixed": rewards, "nfe_cumulative": np.arange(1, 9) * 100})
    return pd.DataFrame(paired), pd.DataFrame(stability), curves


def test_run_and_method_tables_by_hand():
    paired, stability, curves = _runs(
        {
            "flow_grpo": [
                {"ocr": 0.10, "color": -0.02, "quality": 0.0},
                {"ocr": 0.12, "color": 0.00, "quality": 0.0},
            ],
            "multi_grpo": [
                {"ocr": 0.08, "color": 0.04, "quality": 0.0},
                {"ocr": 0.06, "color": 0.06, "quality": 0.0},
            ],
        }
    )
    runs = run_table(paired, stability, curves, WEIGHTS, "flow_grpo")
    first = runs.set_index("run").loc["flow_grpo/seed0"]
    assert first["worst_gain"] == pytest.approx(-0.02)  # min(0.10, -0.02, 0.1 x 0)
    assert runs.set_index("run").loc["multi_grpo/seed0", "worst_gain"] == pytest.approx(0.0)  # quality 0
    # flow_grpo's final reward: mean over its seeds of the last quarter (2 iterations).
    methods = method_table(runs).set_index("method")
    assert methods.loc["flow_grpo", "seeds"] == 2
    assert methods.loc["flow_grpo", "mixed_gain"] == pytest.approx(0.10)  # (0.08 + 0.12) / 2
    assert methods.loc["flow_grpo", "mixed_gain_se"] == pytest.approx(
        np.std([0.08, 0.12], ddof=1) / math.sqrt(2)
    )
    assert methods.loc["flow_grpo", "mixed_gain_se_source"] == "seeds"
    assert methods.loc["multi_grpo", "ocr_gain"] == pytest.approx(0.07)
    assert methods.loc["multi_grpo", "reached"] == 2  # its curves climb higher than flow_grpo's


def test_verdict_names_only_separated_differences():
    # Mixed gains: flow_grpo 0.05, 0.05, 0.07; multi_grpo 0.05, 0.07, 0.07 (overlapping).
    # Worst weighted gains: flow_grpo -0.05, -0.05, -0.04; multi_grpo 0 (quality) every seed.
    paired, stability, curves = _runs(
        {
            "flow_grpo": [{"ocr": 0.10, "color": -0.05, "quality": 0.0}] * 2
            + [{"ocr": 0.11, "color": -0.04, "quality": 0.0}],
            "multi_grpo": [
                {"ocr": 0.03, "color": 0.02, "quality": 0.0},
                {"ocr": 0.05, "color": 0.02, "quality": 0.0},
                {"ocr": 0.04, "color": 0.03, "quality": 0.0},
            ],
        }
    )
    methods = method_table(run_table(paired, stability, curves, WEIGHTS, "flow_grpo"))
    line = verdict(methods, "flow_grpo")
    assert line.startswith("Across 3+ seeds")
    assert "multi_grpo beats flow_grpo on the worst-improved single reward" in line
    assert "test mixed-reward gain" not in line  # 0.063 vs 0.057, each ± 0.007 across seeds
    noisy = methods.copy()
    noisy["worst_gain_se"] = 1.0
    assert "worst-improved" not in verdict(noisy, "flow_grpo")


def test_no_verdict_with_one_seed():
    paired, stability, curves = _runs(
        {
            "flow_grpo": [{"ocr": 0.1, "color": 0.0, "quality": 0.0}],
            "multi_grpo": [{"ocr": 0.5, "color": 0.5, "quality": 0}],
        }
    )
    methods = method_table(run_table(paired, stability, curves, WEIGHTS, "flow_grpo"))
    assert set(methods.mixed_gain_se_source) == {"one run"}
    assert verdict(methods, "flow_grpo").startswith("No verdict")
    assert "not in this study" in verdict(methods, "tree_grpo")
