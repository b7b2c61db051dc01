"""The report's headline: change cells marked beyond two standard errors, a reason where a
trend cannot be fitted, a warning for every stage cut short or an illegible base model, the
mixed reward per image and the views across training seeds."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from pipeline.reporting.html import warnings_for
from pipeline.reporting.tables import (
    comparison_view,
    format_change,
    headline_table,
    method_summary,
    missing_scores,
    per_image_table,
    seed_mean_curve,
    summary_table,
    trend_table,
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
    alike = raw | {"sampling": {"guidance": 1.0}, "train": raw["train"] | {"guidance": 1.0}}
    assert warnings_for(alike, fine, {}, {"steps": 250}) == []
    apart = alike | {"sampling": {"guidance": 4.0}}
    (warning,) = warnings_for(apart, fine, {}, {"steps": 250})
    assert warning.startswith(
        "Training and test sample differently: rollouts at guidance 1.0, the test split at 4.0"
    )


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


def _figure(name: str, mean: float, se: float, source: str) -> dict:
    return {name: mean, f"{name}_se": se, f"{name}_se_source": source}


def test_method_summary_marks_a_single_runs_own_error():
    methods = pd.DataFrame(
        [
            {"method": "flow_grpo", "seeds": 1}
            | _figure("B", 0.5, 0.1, "one run")
            | _figure("W", -0.2, float("nan"), "none")
            | _figure("z_ocr", 0.9, 0.2, "one run")
            | _figure("mixed_gain", 0.149, 0.025, "one run"),
            {"method": "multi_grpo", "seeds": 3}
            | _figure("B", 0.3, 0.2, "seeds")
            | _figure("W", 0.1, 0.1, "seeds")
            | _figure("z_ocr", 0.3, 0.2, "seeds")
            | _figure("mixed_gain", 0.05, 0.04, "seeds"),
        ]
    )
    table = method_summary(methods, ["ocr"]).set_index("method")
    assert table.loc["flow_grpo", "balanced gain B"] == "+0.500 ± 0.100 ▲ (1 run)"
    assert table.loc["flow_grpo", "worst reward W"] == "-0.200"
    assert table.loc["flow_grpo", "z OCR reward"] == "+0.900 ± 0.200 ▲ (1 run)"
    assert table.loc["flow_grpo", "mixed reward gain (flow_grpo's objective)"] == "+0.149 ± 0.025 ▲ (1 run)"
    assert table.loc["multi_grpo", "balanced gain B"] == "+0.300 ± 0.200"


def test_comparison_view_leaves_untested_rows_blank():
    tests = pd.DataFrame(
        [
            {
                "measure": "B",
                "comparison": "2x2 tree",
                "seeds": 3,
                "estimate": 0.4,
                "se": 0.1,
                "df": 6,
                "p": 0.007,
                "p_holm": 0.04,
                "significant": True,
                "mde": 0.3,
            },
            {
                "measure": "W",
                "comparison": "2x2 tree",
                "seeds": 1,
                "estimate": -0.1,
                "se": float("nan"),
                "df": 0,
                "p": float("nan"),
                "p_holm": float("nan"),
                "significant": False,
                "mde": float("nan"),
            },
        ]
    )
    view = comparison_view(tests)
    assert view.loc[0, "estimate ± SE"] == "+0.400 ± 0.100"
    assert (view.loc[0, "Holm p"], view.loc[0, "significant"]) == ("0.04", "yes")
    assert (view.loc[1, "estimate ± SE"], view.loc[1, "p"], view.loc[1, "significant"]) == ("-0.100", "", "")


def test_missing_scores_are_counted_warned_about_and_never_averaged():
    """4 of 10 base images without a finite OCR score: the mean is that of the other 6."""
    scores = [0.2] * 6 + [math.nan] * 4
    rewards = pd.DataFrame(
        {
            "model": ["base"] * 10 + ["flow_grpo"] * 10,
            "line_id": list(range(10)) * 2,
            "seed": [0] * 20,
            "reward": ["ocr"] * 20,
            "score": scores + [0.4] * 10,
            "reason": [""] * 6 + ["non-finite score: ocr returned nan for x.png"] * 4 + [""] * 10,
        }
    )
    missing = missing_scores(rewards)
    assert missing.to_dict() == {"base": 4}
    summary = summary_table(per_image_table(rewards), {}, missing)
    assert summary.set_index("model").missing_scores.to_dict() == {"base": 4, "flow_grpo": 0}
    assert summary.set_index("model").ocr["base"] == pytest.approx(0.2)
    (warning,) = warnings_for({}, summary, {}, None)
    assert warning.startswith("4 test scores are missing (base 4)")
