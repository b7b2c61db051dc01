"""The report's headline: change cells marked beyond two standard errors, a reason where a
trend cannot be fitted, a warning for every stage cut short or an illegible base model, the
mixed reward per image and the views across training seeds."""

from __future__ import annotations

import math

import pandas as pd

from pipeline.report import (
    format_change,
    headline_table,
    per_image_table,
    seed_mean_curve,
    seed_summary,
    trend_table,
    warnings_for,
)


def test_format_change_marks_changes_beyond_two_standard_errors():
    assert format_change(0.035, 0.014) == "+0.035 ± 0.014 ▲"
    assert format_change(0.02, 0.014) == "+0.020 ± 0.014"
    assert format_change(-0.026, 0.007) == "-0.026 ± 0.007 ▼"
    assert format_change(math.nan, math.nan) == ""


def test_headline_has_the_mean_and_the_paired_change():
    summary = pd.DataFrame(
        {"model": ["base", "multi_grpo"], "ocr": [0.525, 0.560], "ocr_exact": [0.143, 0.209]}
    )
    paired = pd.DataFrame(
        {
            "model": ["multi_grpo"],
            "ocr_diff": [0.035],
            "ocr_diff_se": [0.014],
            "ocr_exact_diff": [0.066],
            "ocr_exact_diff_se": [0.04],
        }
    )
    table = headline_table(summary, paired, ["ocr", "ocr_exact"])
    assert list(table.columns) == ["model", "OCR reward", "OCR exact match"]
    assert table.iloc[0].tolist() == ["base", "0.525", "0.143"]
    assert table.iloc[1].tolist() == ["multi_grpo", "0.560 (+0.035 ± 0.014 ▲)", "0.209 (+0.066 ± 0.040)"]


def test_trend_cells_give_a_reason_when_there_is_no_trend():
    stability = pd.DataFrame(
        {
            "run": ["flow_grpo/seed0", "tree_grpo/seed0"],
            "iterations": [12, 2],
            "mixed_trend": [0.26, math.nan],
            "mixed_trend_se": [0.06, math.nan],
            "ocr_trend": [-0.01, math.nan],
            "ocr_trend_se": [0.05, math.nan],
        }
    )
    table = trend_table(stability, ["ocr"])
    assert table.iloc[0].tolist() == ["flow_grpo/seed0", 12, "+0.260 ± 0.060 ▲", "-0.010 ± 0.050"]
    assert table.iloc[1]["OCR reward"] == "too few iterations (a trend needs 3)"


def test_warnings_name_every_stage_cut_short_and_an_illegible_base():
    raw = {"pretrain": {"steps": 250, "max_minutes": 13.0}, "train": {"iterations": 40, "max_minutes": 8.0}}
    summary = pd.DataFrame({"model": ["base", "flow_grpo"], "ocr": [0.0, 0.01]})
    infos = {"flow_grpo": {"iterations": 2}, "multi_grpo": {"iterations": 40}}
    warnings = warnings_for(raw, summary, infos, {"steps": 67})
    assert len(warnings) == 3
    assert "Pretraining was cut short: 67 of 250 steps" in warnings[0]
    assert "Training of flow_grpo was cut short: 2 of 40 iterations" in warnings[1]
    assert "The base model is illegible: test OCR reward 0.000" in warnings[2]
    fine = pd.DataFrame({"model": ["base"], "ocr": [0.5]})
    assert warnings_for(raw, fine, {"m": {"iterations": 40}}, {"steps": 250}) == []


def test_mixed_reward_per_image_uses_the_training_weights():
    rewards = pd.DataFrame(
        {
            "model": "base",
            "line_id": [0, 0, 0],
            "seed": 0,
            "reward": ["ocr", "color", "quality"],
            "score": [0.5, 0.25, 4.0],
            "ocr_exact": [False, None, None],
            "color": ["red", "red", "red"],
            "color_pred": [None, "blue", None],
        }
    )
    images = per_image_table(rewards, {"ocr": 1.0, "color": 1.0, "quality": 0.1})
    assert images["mixed"].iloc[0] == 0.5 + 0.25 + 0.4
    assert "mixed" not in per_image_table(rewards, {"ocr": 1.0, "pickscore": 1.0})  # pickscore not scored


def test_seed_mean_curve_averages_seeds_with_their_standard_error():
    runs = [
        pd.DataFrame({"iteration": [0, 1, 2], "ocr_mean": [1.0] * 3, "nfe_cumulative": [10, 20, 30]}),
        pd.DataFrame({"iteration": [0, 1, 2], "ocr_mean": [3.0] * 3, "nfe_cumulative": [12, 22, 32]}),
    ]
    curve = seed_mean_curve(runs, "ocr_mean")
    assert curve["mean"].tolist() == [2.0] * 3 and curve["nfe"].tolist() == [11.0, 21.0, 31.0]
    assert curve["se"].tolist() == [1.0] * 3  # std([1, 3]) = sqrt(2), over sqrt(2 seeds)
    assert seed_mean_curve(runs[:1], "ocr_mean")["se"].isna().all()  # one seed: no band


def test_seed_summary_marks_a_single_runs_own_error():
    methods = pd.DataFrame(
        [
            {
                "method": "flow_grpo",
                "seeds": 1,
                "mixed_gain": 0.149,
                "mixed_gain_se": 0.025,
                "mixed_gain_se_source": "one run",
                "nfe_to_target": float("nan"),
                "nfe_to_target_se": float("nan"),
                "nfe_to_target_se_source": "none",
                "reached": 0,
            },
            {
                "method": "multi_grpo",
                "seeds": 3,
                "mixed_gain": 0.05,
                "mixed_gain_se": 0.04,
                "mixed_gain_se_source": "seeds",
                "nfe_to_target": 12000.0,
                "nfe_to_target_se": 800.0,
                "nfe_to_target_se_source": "seeds",
                "reached": 2,
            },
        ]
    )
    table = seed_summary(methods, []).set_index("method")
    assert table.loc["flow_grpo", "test mixed gain"] == "+0.149 ± 0.025 ▲ (1 run)"
    assert table.loc["flow_grpo", "NFE to the reference's final reward"] == "not reached"
    assert table.loc["multi_grpo", "test mixed gain"] == "+0.050 ± 0.040"
    assert table.loc["multi_grpo", "NFE to the reference's final reward"] == "12,000 ± 800 (2 of 3 seeds)"
