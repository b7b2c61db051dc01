"""Methods compared across training seeds: hand-computed means, errors, NFE and verdicts."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.reporting.seeds import across_seeds, method_table, run_table, split_run

WEIGHTS = {"ocr": 1.0, "color": 1.0, "quality": 0.1}


def test_split_run():
    assert split_run("flow_grpo/seed3") == ("flow_grpo", 3)
    assert split_run("base") == ("base", None)
    assert split_run("odd/seedling") == ("odd/seedling", None)
    assert split_run("flow_grpo/seed3/equal_nfe") == ("flow_grpo", 3)


def test_across_seeds_uses_the_spread_of_the_seeds_or_the_one_runs_error():
    mean, se, source = across_seeds(np.array([1.0, 2.0, 3.0]), np.array([9.0, 9.0, 9.0]))
    assert (mean, source) == (2.0, "seeds") and se == pytest.approx(1 / math.sqrt(3))  # std 1
    assert across_seeds(np.array([0.4, np.nan]), np.array([0.1, 0.2])) == (0.4, 0.1, "one run")
    mean, se, source = across_seeds(np.array([np.nan]), np.array([0.1]))
    assert math.isnan(mean) and source == "none"


def test_run_and_method_tables_by_hand():
    paired = pd.DataFrame(
        [
            {"model": run, "mixed_diff": m, "mixed_diff_se": 0.01, "ocr_diff": o, "ocr_diff_se": 0.02}
            for run, m, o in (
                ("flow_grpo/seed0", 0.08, 0.10),
                ("flow_grpo/seed1", 0.12, 0.14),
                ("flow_grpo/seed0/equal_nfe", 0.05, 0.06),
                ("multi_grpo/seed0", 0.02, 0.03),
            )
        ]
    )
    standardised = pd.DataFrame(
        [
            {"model": "flow_grpo/seed0", "images": 9, "B": 0.4, "B_se": 0.1, "W": -0.1},
            {"model": "flow_grpo/seed1", "images": 9, "B": 0.6, "B_se": 0.1, "W": 0.1},
            {"model": "flow_grpo/seed0/equal_nfe", "images": 9, "B": 0.2, "B_se": 0.1, "W": 0.0},
            {"model": "multi_grpo/seed0", "images": 9, "B": 0.3, "B_se": 0.05, "W": 0.2},
        ]
    )
    stability = pd.DataFrame([{"run": "flow_grpo/seed0", "mixed_trend": 0.07, "mixed_trend_se": 0.02}])
    runs = run_table(paired, standardised, stability, WEIGHTS).set_index("run")
    assert runs.loc["flow_grpo/seed0/equal_nfe", "checkpoint"] == "equal_nfe"
    assert runs.loc["flow_grpo/seed0/equal_nfe", "seed"] == 0
    assert math.isnan(runs.loc["flow_grpo/seed0/equal_nfe", "trend"])  # the curve runs past the snapshot
    assert runs.loc["flow_grpo/seed0", "trend"] == pytest.approx(0.07)
    assert runs.loc["flow_grpo/seed1", "ocr_gain"] == pytest.approx(0.14)
    final = runs[runs.checkpoint == "final"].reset_index()
    methods = method_table(final).set_index("method")
    assert methods.loc["flow_grpo", "seeds"] == 2
    assert methods.loc["flow_grpo", "B"] == pytest.approx(0.5)
    assert methods.loc["flow_grpo", "B_se"] == pytest.approx(np.std([0.4, 0.6], ddof=1) / math.sqrt(2))
    assert methods.loc["flow_grpo", "B_se_source"] == "seeds"
    assert methods.loc["flow_grpo", "mixed_gain"] == pytest.approx(0.10)
    assert methods.loc["multi_grpo", "B_se"] == pytest.approx(0.05)  # one run: its own error
    assert methods.loc["multi_grpo", "B_se_source"] == "one run"


def test_nearest_snapshot_by_hand():
    from pipeline.stages.sample_eval import nearest_snapshot

    # Flat run: 3136 NFE per iteration; the tree's final 8 x 2384 = 19072 is nearest 6 x 3136.
    cumulative = {i: 3136.0 * i for i in range(1, 9)}
    assert nearest_snapshot(cumulative, [2, 4, 6, 8], 19072.0) == 6
    assert nearest_snapshot(cumulative, [2, 4, 8], 19072.0) == 8  # 6016 from 25088, 6528 from 12544
    assert nearest_snapshot({2: 10.0, 4: 30.0}, [2, 4], 20.0) == 2  # a tie takes the earlier
    with pytest.raises(ValueError, match="no snapshot"):
        nearest_snapshot(cumulative, [], 1.0)


def test_snapshot_files_lists_a_folder_by_iteration(tmp_path):
    from pipeline.runtime.checkpoint import snapshot_files, snapshot_name

    for iteration in (4, 2):
        (tmp_path / snapshot_name(iteration)).touch()
    (tmp_path / "weights.safetensors").touch()
    assert snapshot_name(6) == "iteration_0006.safetensors"
    assert snapshot_files(tmp_path) == {2: tmp_path / snapshot_name(2), 4: tmp_path / snapshot_name(4)}
    assert snapshot_files(tmp_path / "absent") == {}
