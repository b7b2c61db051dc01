"""Comparing methods across training seeds: pure functions over the report's tables.

A trained run is named ``METHOD/seedN`` (its folders under ``train/`` and ``eval/``). Every
figure here is first computed per run, then summarised per method as the mean across its
seeds with the standard error of that mean (``std / sqrt(seeds)``, ``ddof=1``). A method
with one seed has no spread across seeds: its figure keeps the run's own standard error (over
test prompts, or the fitted trend's), flagged by ``se_source``, and no verdict uses it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEPARATION = 2.0  # standard errors of a difference that count as separated


def split_run(name: str) -> tuple[str, int | None]:
    """``"flow_grpo/seed3"`` -> ``("flow_grpo", 3)``; a name without a seed (``"base"``) ->
    ``(name, None)``."""
    method, sep, seed = name.rpartition("/seed")
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


def nfe_to_target(curve: pd.DataFrame, target: float, column: str = "reward_mixed") -> float:
    """Cumulative NFE at the first iteration where the run's rolling mean reward (window: a
    quarter of its iterations, at least 1) reaches ``target``; NaN if it never does.
    ``curve``: one row per iteration with ``column`` and ``nfe_cumulative``."""
    window = max(1, len(curve) // 4)
    smooth = curve[column].rolling(window, min_periods=window).mean().to_numpy()
    reached = np.flatnonzero(smooth >= target)
    return float(curve["nfe_cumulative"].iloc[reached[0]]) if len(reached) else float("nan")


def final_reward(curve: pd.DataFrame, column: str = "reward_mixed") -> float:
    """Mean of the last quarter of a run's per-iteration rewards (at least one iteration)."""
    return float(curve[column].iloc[-max(1, len(curve) // 4) :].mean())


def run_table(
    paired: pd.DataFrame,
    stability: pd.DataFrame,
    curves: dict[str, pd.DataFrame],
    weights: dict[str, float],
    reference: str,
) -> pd.DataFrame:
    """One row per trained run: its method and seed, every reward's paired test gain over the
    base model (``<reward>_gain``, ``_gain_se``; ``mixed`` included when ``paired`` has it),
    the worst single reward's weighted gain (``worst_gain``: ``min_m w_m gain_m``, so that
    rewards count in the units they add to the mixed reward), the rollout mixed-reward trend,
    and the NFE to reach the ``reference`` method's final mixed reward (its runs' mean
    :func:`final_reward`)."""
    targets = [final_reward(c) for run, c in curves.items() if split_run(run)[0] == reference]
    target = float(np.mean(targets)) if targets else float("nan")
    paired = paired.set_index("model") if len(paired) else pd.DataFrame()
    stability = stability.set_index("run") if len(stability) else pd.DataFrame()
    rows = []
    for run in sorted(set(paired.index) | set(curves)):
        method, seed = split_run(run)
        row: dict = {"run": run, "method": method, "seed": seed}
        if run in paired.index:
            for name in ["mixed", *weights]:
                if f"{name}_diff" in paired:
                    row[f"{name}_gain"] = paired.loc[run, f"{name}_diff"]
                    row[f"{name}_gain_se"] = paired.loc[run, f"{name}_diff_se"]
            weighted = [
                weights[name] * paired.loc[run, f"{name}_diff"]
                for name in weights
                if weights[name] != 0 and f"{name}_diff" in paired
            ]
            if weighted:
                row["worst_gain"] = float(np.min(weighted))
        if run in stability.index and "mixed_trend" in stability:
            row["trend"] = stability.loc[run, "mixed_trend"]
            row["trend_se"] = stability.loc[run, "mixed_trend_se"]
        if run in curves and np.isfinite(target):
            row["nfe_to_target"] = nfe_to_target(curves[run], target)
        rows.append(row)
    return pd.DataFrame(rows)


def method_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per method: seeds, then for each run-table figure (every ``*_gain``,
    ``worst_gain``, ``trend`` and ``nfe_to_target``) the mean across seeds, its standard error
    (``_se``) and where that error comes from (``_se_source``: ``seeds``, or ``one run``).
    ``nfe_to_target`` averages the seeds that reached the target; ``reached`` counts them."""
    figures = [c for c in runs.columns if c.endswith("_gain") and c != "worst_gain"]
    figures += [c for c in ("worst_gain", "trend", "nfe_to_target") if c in runs]
    rows = []
    for method, group in runs.groupby("method", sort=True):
        row: dict = {"method": method, "seeds": len(group)}
        for figure in figures:
            se_column = f"{figure}_se" if f"{figure}_se" in group else None
            within = group[se_column].to_numpy() if se_column else np.full(len(group), np.nan)
            mean, se, source = across_seeds(group[figure].to_numpy(), within)
            row |= {figure: mean, f"{figure}_se": se, f"{figure}_se_source": source}
        if "nfe_to_target" in group:
            row["reached"] = int(np.isfinite(group["nfe_to_target"].to_numpy(dtype=float)).sum())
        rows.append(row)
    return pd.DataFrame(rows)


CRITERIA = {
    "mixed_gain": ("the test mixed-reward gain", True),
    "worst_gain": ("the worst-improved single reward", True),
    "trend": ("the training-curve trend", True),
    "nfe_to_target": ("NFE to reach the reference's final reward", False),
}


def verdict(methods: pd.DataFrame, reference: str) -> str:
    """One sentence: which methods beat or trail ``reference`` on which criterion, naming only
    differences beyond :data:`SEPARATION` standard errors of the difference, with both
    methods' errors taken across at least 2 seeds each."""
    table = methods.set_index("method")
    if reference not in table.index:
        return f"No verdict: the reference method {reference} is not in this study."
    if (table["seeds"] < 2).any():
        return (
            "No verdict: a winner can be named only across seeds, and some method has one training "
            "seed (add seeds to train.seeds)."
        )
    findings = []
    for method in table.index.drop(reference):
        for figure, (label, higher_better) in CRITERIA.items():
            if figure not in table:
                continue
            a, b = table.loc[method, figure], table.loc[reference, figure]
            se = np.hypot(table.loc[method, f"{figure}_se"], table.loc[reference, f"{figure}_se"])
            if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(se)) or abs(a - b) <= SEPARATION * se:
                continue
            better = (a > b) == higher_better
            findings.append(
                f"{method} {'beats' if better else 'trails'} {reference} on {label} "
                f"({a:.3g} vs {b:.3g}, difference {a - b:+.3g} ± {se:.2g})"
            )
    seeds = int(table["seeds"].min())
    if not findings:
        return f"No method separates from {reference} on any criterion across {seeds}+ seeds."
    return f"Across {seeds}+ seeds: " + "; ".join(findings) + ". Every other difference is within noise."
