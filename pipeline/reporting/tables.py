"""The report's tables: pure functions from the stage outputs to pandas tables.

Per image (:func:`per_image_table`), per model (:func:`summary_table`), paired against the base
model (:func:`paired_table`), per training run (:func:`stability_table`, :func:`trend_table`)
and their reading views (:func:`headline_table`, :func:`method_summary`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.rewards import REWARDS


def metric_label(name: str) -> str:
    """How a table names a metric: a reward's label or one of its indicators' (from the
    registry, read at call time), ``mixed reward``, else the name itself."""
    if name == "mixed":
        return "mixed reward"
    if name in REWARDS:
        return REWARDS[name].label or name
    for reward in REWARDS.values():
        if name in reward.indicators:
            return reward.indicators[name]
    return name


def reward_metrics(names) -> list[str]:
    """Each reward of ``names`` followed by its indicators: the per-image metric columns."""
    return [column for name in names for column in (name, *getattr(REWARDS.get(name), "indicators", {}))]


def per_image_table(rewards: pd.DataFrame, weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Long rewards table -> one row per image: a score column per reward plus its indicators
    as rates (``Reward.indicators``), and ``mixed`` (``sum_m w_m r_m``, the reward the methods
    optimise) when every reward with a non-zero weight in ``weights`` was scored."""
    keys = ["model", "line_id", "seed"]
    wide = rewards.pivot_table(index=keys, columns="reward", values="score", aggfunc="first").reset_index()
    weighted = {name: w for name, w in (weights or {}).items() if w != 0}
    if weighted and all(name in wide for name in weighted):
        wide["mixed"] = sum(w * wide[name] for name, w in weighted.items())
    for name in sorted(set(rewards.reward)):
        for indicator in getattr(REWARDS.get(name), "indicators", {}):
            if indicator in rewards:
                own = rewards[rewards.reward == name].set_index(keys)[indicator]
                wide = wide.join(own.astype(float), on=keys)
    return wide


def summary_table(
    images: pd.DataFrame, infos: dict[str, dict], missing: pd.Series | None = None
) -> pd.DataFrame:
    """Per model: mean over images within each seed, then mean and std across seeds; a missing
    score is left out of every mean and counted in ``missing_scores`` (``missing``: per model,
    :func:`missing_scores`)."""
    metrics = [c for c in images.columns if c not in ("model", "line_id", "seed")]
    per_seed = images.groupby(["model", "seed"])[metrics].mean()
    mean, spread = per_seed.groupby("model").mean(), per_seed.groupby("model").std(ddof=0)
    table = mean.join(spread.add_suffix("_seed_std"))
    table["seeds"] = per_seed.groupby("model").size()
    table["missing_scores"] = [int(missing.get(m, 0)) if missing is not None else 0 for m in table.index]
    table["training_nfe"] = [infos.get(m, {}).get("nfe_cumulative", 0) for m in table.index]
    table["training_minutes"] = [round(infos.get(m, {}).get("train_seconds", 0) / 60, 2) for m in table.index]
    table["iterations"] = [infos.get(m, {}).get("iterations", 0) for m in table.index]
    order = ["base"] + sorted(m for m in table.index if m != "base")
    return table.loc[[m for m in order if m in table.index]].reset_index()


def missing_scores(rewards: pd.DataFrame) -> pd.Series:
    """Per model of the long rewards table: how many (image, reward) scores are missing (an
    unreadable image, a reward that returned NaN or an infinite value; ``reason`` says which)."""
    return rewards[rewards["score"].isna()].groupby("model").size()


def paired_table(images: pd.DataFrame, base: str = "base") -> pd.DataFrame:
    """Per model other than ``base``: for every metric, the mean per-image difference to
    ``base`` on the same test prompt and seed, and that mean's standard error. Pairing removes
    the prompt-to-prompt spread that dominates a difference of two means. ``images`` is
    :func:`per_image_table`'s one row per (model, line_id, seed)."""
    keys = ["line_id", "seed"]
    metrics = [c for c in images.columns if c not in ("model", *keys)]
    reference = images[images.model == base].set_index(keys)[metrics]
    rows = []
    for model in sorted(set(images.model) - {base}):
        own = images[images.model == model].set_index(keys)[metrics]
        diff = own.join(reference, rsuffix="_base", how="inner")
        row = {"model": model, "images": len(diff)}
        for metric in metrics:
            delta = diff[metric] - diff[f"{metric}_base"]
            row[f"{metric}_diff"] = delta.mean()
            row[f"{metric}_diff_se"] = delta.std(ddof=1) / np.sqrt(len(delta)) if len(delta) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def linear_trend(steps: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Least-squares line through ``values`` ``[N]`` against ``steps`` ``[N]``: its change over
    the run (slope x (last step - first step)) and that change's standard error, so a rise
    can be told from the iteration-to-iteration noise (NaNs when N < 3 or steps are equal)."""
    steps, values = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if len(steps) < 3 or np.ptp(steps) == 0:
        return float("nan"), float("nan")
    centred = steps - steps.mean()
    slope = float(centred @ (values - values.mean()) / (centred @ centred))
    residuals = values - values.mean() - slope * centred
    slope_se = float(np.sqrt(residuals @ residuals / (len(steps) - 2) / (centred @ centred)))
    span = float(np.ptp(steps))
    return slope * span, slope_se * span


def format_change(value: float, se: float) -> str:
    """``"+0.035 ± 0.014"``, marked ``▲`` / ``▼`` when the change is beyond 2 standard errors."""
    if not np.isfinite(value) or not np.isfinite(se):
        return ""
    mark = " ▲" if value > 2 * se else " ▼" if value < -2 * se else ""
    return f"{value:+.3f} ± {se:.3f}{mark}"


def headline_table(summary: pd.DataFrame, paired: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """One row per model, one cell per metric: the test-split mean and, for trained models, its
    change against the base model paired per image (:func:`format_change`), e.g.
    ``"0.560 (+0.035 ± 0.014 ▲)"``."""
    paired = paired.set_index("model") if len(paired) else pd.DataFrame()
    rows = []
    for _, model_row in summary.iterrows():
        model, row = model_row["model"], {"model": model_row["model"]}
        for metric in metrics:
            cell = f"{model_row[metric]:.3f}"
            if model in paired.index and f"{metric}_diff" in paired:
                change = format_change(
                    paired.loc[model, f"{metric}_diff"], paired.loc[model, f"{metric}_diff_se"]
                )
                cell += f" ({change})" if change else ""
            row[metric_label(metric)] = cell
        rows.append(row)
    return pd.DataFrame(rows)


def trend_table(stability: pd.DataFrame, rewards: list[str]) -> pd.DataFrame:
    """One row per trained run, one cell per reward (and the weighted ``mixed`` reward the
    methods optimise): the change of a line fitted to the rollouts' per-iteration means over
    the run, ± its standard error (:func:`format_change`), or the reason there is none."""
    rows = []
    for _, run_row in stability.iterrows():
        row = {"run": run_row["run"], "iterations": int(run_row["iterations"])}
        for name in ["mixed", *rewards]:
            if f"{name}_trend" not in run_row:
                continue
            cell = format_change(run_row[f"{name}_trend"], run_row[f"{name}_trend_se"])
            row[metric_label(name)] = cell or "too few iterations (a trend needs 3)"
        rows.append(row)
    return pd.DataFrame(rows)


def method_summary(methods: pd.DataFrame, rewards: list[str]) -> pd.DataFrame:
    """The per-method table of :func:`pipeline.reporting.seeds.method_table` for reading: the balanced
    gain B, the worst reward W, each reward's standardised gain z, then the raw mixed-reward
    gain and the training trend, each as ``mean ± SE`` (:func:`format_change`) with the SE
    across seeds, or marked ``(1 run)`` when it is the one run's own."""

    def cell(row: pd.Series, figure: str) -> str:
        if figure not in row or not np.isfinite(row[figure]):
            return ""
        text = format_change(row[figure], row[f"{figure}_se"]) or f"{row[figure]:+.3f}"
        return text + (" (1 run)" if row[f"{figure}_se_source"] == "one run" else "")

    rows = []
    for _, row in methods.iterrows():
        out = {"method": row["method"], "seeds": int(row["seeds"])}
        for column, label in (
            ("leaves_per_iteration", "leaves / iteration"),
            ("sampling_nfe_per_iteration", "sampling NFE / iteration"),
            ("training_nfe", "training NFE"),
        ):
            if column in row and np.isfinite(row[column]):
                out[label] = f"{row[column]:,.0f}"
        out["balanced gain B"] = cell(row, "B")
        out["worst reward W"] = cell(row, "W")
        for name in rewards:
            out[f"z {metric_label(name)}"] = cell(row, f"z_{name}")
        out["mixed reward gain (flow_grpo's objective)"] = cell(row, "mixed_gain")
        if "trend" in row:
            out["training trend (mixed)"] = cell(row, "trend")
        rows.append(out)
    return pd.DataFrame(rows)


def comparison_view(tests: pd.DataFrame) -> pd.DataFrame:
    """:func:`pipeline.reporting.analysis.comparisons` for reading: one row per test with its estimate ±
    SE, degrees of freedom, raw and Holm-adjusted p, the minimum detectable effect, and
    whether it is significant after Holm (blank where the seeds give no test)."""
    rows = []
    for test in tests.itertuples():
        tested = np.isfinite(test.p)
        rows.append(
            {
                "measure": test.measure,
                "comparison": test.comparison,
                "seeds": test.seeds,
                "estimate ± SE": f"{test.estimate:+.3f}"
                + (f" ± {test.se:.3f}" if np.isfinite(test.se) else ""),
                "df": test.df,
                "p": f"{test.p:.3g}" if tested else "",
                "Holm p": f"{test.p_holm:.3g}" if tested else "",
                "MDE": f"{test.mde:.3f}" if np.isfinite(test.mde) else "",
                "significant": ("yes" if test.significant else "no") if tested else "",
            }
        )
    return pd.DataFrame(rows)


def stability_table(
    metrics: dict[str, pd.DataFrame], probes: dict[str, pd.DataFrame], rewards: list[str]
) -> pd.DataFrame:
    """Per trained run (``METHOD/seedN``): reward at the start and end of training (first and
    last quarter of the iterations, and the fixed probe batch before the first and after the
    last update), the change of a line fitted to the per-iteration means with its standard error
    (:func:`linear_trend`), the spread of those means, the mean within-group std and the
    share of zero-variance groups."""
    rows = []
    for run, table in sorted(metrics.items()):
        row = {"run": run, "iterations": len(table)}
        probe = probes.get(run, pd.DataFrame())
        # The weighted sum the methods optimise ("mixed") first, then every reward on its own.
        columns = {"mixed": "reward_mixed"} | {reward: f"{reward}_mean" for reward in rewards}
        for name, column in columns.items():
            if column in probe:
                row[f"probe_{name}_start"] = probe[column].iloc[0]
                row[f"probe_{name}_end"] = probe[column].iloc[-1]
        for name, column in columns.items():
            if column in table:
                quarter = max(1, len(table) // 4)
                change, change_se = linear_trend(table["iteration"].to_numpy(), table[column].to_numpy())
                row |= {
                    f"{name}_start": table[column].iloc[:quarter].mean(),
                    f"{name}_end": table[column].iloc[-quarter:].mean(),
                    f"{name}_trend": change,
                    f"{name}_trend_se": change_se,
                    f"{name}_iteration_std": table[column].std(ddof=0),
                }
            if f"{name}_std" in table:
                row[f"{name}_within_group_std"] = table[f"{name}_std"].mean()
        row["zero_variance_groups"] = table["zero_variance_groups"].mean()
        row["clip_fraction"] = table["clip_fraction"].mean() if "clip_fraction" in table else 0.0
        rows.append(row)
    return pd.DataFrame(rows)


def seed_mean_curve(tables: list[pd.DataFrame], column: str) -> pd.DataFrame:
    """The runs of one method on a common iteration axis: per iteration, the mean across seeds
    of each run's 3-iteration mean of ``column``, its standard error (NaN with one run) and
    the mean cumulative NFE. Iterations some run lacks (cut short) use the runs that have them."""
    smooth = pd.concat(
        [t.set_index("iteration")[column].rolling(3, min_periods=1).mean() for t in tables], axis=1
    )
    nfe = pd.concat([t.set_index("iteration")["nfe_cumulative"] for t in tables], axis=1)
    counts = smooth.count(axis=1)
    se = smooth.std(axis=1, ddof=1) / np.sqrt(counts)
    return pd.DataFrame(
        {"mean": smooth.mean(axis=1), "se": se.where(counts > 1), "nfe": nfe.mean(axis=1)}
    ).reset_index()
