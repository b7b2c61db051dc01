"""The report's headline: change cells marked beyond two standard errors, a reason where a
trend cannot be fitted, and a warning for every stage cut short or an illegible base model."""

from __future__ import annotations

import math

import pandas as pd

from pipeline.report import format_change, headline_table, trend_table, warnings_for


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
