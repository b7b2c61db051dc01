"""Comparing methods across training seeds: pure functions over the report's tables.

A trained run is named ``METHOD/seedN`` (its folders under ``train/`` and ``eval/``). Every
figure here is first computed per run, then summarised per method as the mean across its
seeds with the standard error of that mean (``std / sqrt(seeds)``, ``ddof=1``). A method
with one seed has no spread across seeds: its figure keeps the run's own standard error (over
test prompts, or the fitted trend's), flagged by ``se_source``. The tests across seeds
and the verdict live in :mod:`pipeline.reporting.analysis`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EQUAL_NFE_SUFFIX = "/equal_nfe"  # a run's snapshot at the reference tree's final NFE


def is_equal_nfe(name: str) -> bool:
    return name.endswith(EQUAL_NFE_SUFFIX)


def split_run(name: str) -> tuple[str, int | None]:
    """``"flow_grpo/seed3"`` (or its snapshot ``"flow_grpo/seed3/equal_nfe"``) ->
    ``("flow_grpo", 3)``; a name without a seed (``"base"``) -> ``(name, None)``."""
    method, sep, seed = name.removesuffix(EQUAL_NFE_SUFFIX).rpartition("/seed")
    if sep and seed.isdigit():
        return method, int(seed)
    return name, None


def across_seeds(values: np.ndarray, within_se: np.ndarray) -> tuple[float, float, str]:
    """Mean of ``values`` ``[S]`` (one per seed; NaNs dropped) and its standard error: across
    seeds when there are at least 2, else the one run's ``within_se`` ``[S]``."""
    values, within_se = np.asarray(values, dtype=float), np.asarray(within_se, dtype=float)
    keep = np.isfinite(values)
    values, within_se = values[keep], within_se[keep]
    if len(values) >= 2:
        return float(values.mean()), float(values.std(ddof=1) / np.sqrt(len(values))), "seeds"
    if len(values) == 1:
        return float(values[0]), float(within_se[0]), "one run"
    return float("nan"), float("nan"), "none"


def run_table(
    paired: pd.DataFrame, standardised: pd.DataFrame, stability: pd.DataFrame, weights: dict[str, float]
) -> pd.DataFrame:
    """One row per trained run (or its equal-NFE snapshot): its method, seed and ``checkpoint``
    (``final`` or ``equal_nfe``); every reward's paired test gain over the base model
    (``<reward>_gain``, ``_gain_se``; ``mixed`` included when ``paired`` has it); the
    standardised gains ``z_<reward>`` and the balanced gain ``B`` (with ``_se`` over test
    images) and worst reward ``W`` (:func:`pipeline.reporting.analysis.standardised_gains`); and, for a
    run's final weights, the rollout mixed-reward trend of the run."""
    paired = paired.set_index("model") if len(paired) else pd.DataFrame()
    standardised = standardised.set_index("model") if len(standardised) else pd.DataFrame()
    stability = stability.set_index("run") if len(stability) else pd.DataFrame()
    rows = []
    for run in sorted(set(paired.index) | set(standardised.index) | set(stability.index)):
        method, seed = split_run(run)
        if seed is None:
            continue
        final = run.removesuffix(EQUAL_NFE_SUFFIX)
        row: dict = {"run": run, "method": method, "seed": seed}
        row["checkpoint"] = "equal_nfe" if is_equal_nfe(run) else "final"
        if run in paired.index:
            for name in ["mixed", *weights]:
                if f"{name}_diff" in paired:
                    row[f"{name}_gain"] = paired.loc[run, f"{name}_diff"]
                    row[f"{name}_gain_se"] = paired.loc[run, f"{name}_diff_se"]
        if run in standardised.index:
            row |= {c: standardised.loc[run, c] for c in standardised.columns if c != "images"}
        if run == final and final in stability.index and "mixed_trend" in stability:
            row["trend"] = stability.loc[final, "mixed_trend"]
            row["trend_se"] = stability.loc[final, "mixed_trend_se"]
        rows.append(row)
    return pd.DataFrame(rows)


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method: seeds, then for each run-table figure (``B``, ``W``, every ``z_*``
    and ``*_gain``, and ``trend``) the mean across seeds, its standard error (``_se``) and
    where that error comes from (``_se_source``: ``seeds``, or ``one run``). ``runs``: the
    runs of one checkpoint (:func:`run_table` rows)."""
    figures = [c for c in ("B", "W") if c in runs]
    figures += [c for c in runs.columns if c.startswith("z_") and not c.endswith("_se")]
    figures += [c for c in runs.columns if c.endswith("_gain")]
    figures += [c for c in ("trend",) if c in runs]
    rows = []
    for method, group in runs.groupby("method", sort=True):
        row: dict = {"method": method, "seeds": len(group)}
        for figure in figures:
            se_column = f"{figure}_se" if f"{figure}_se" in group else None
            within = group[se_column].to_numpy() if se_column else np.full(len(group), np.nan)
            mean, se, source = across_seeds(group[figure].to_numpy(), within)
            row |= {figure: mean, f"{figure}_se": se, f"{figure}_se_source": source}
        rows.append(row)
    return pd.DataFrame(rows)
