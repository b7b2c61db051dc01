"""Outcome measures and statistics of the comparison: pure functions over the report's tables.

Outcome measures, so that no method is favoured by the choice of one:

* per reward ``m``, the standardised gain ``z_m = gain_m / s_m``: the paired test gain over the
  base model in units of ``s_m``, the base model's mean within-group std of that reward under
  the training sampler (the spread GRPO learns from; the base model card measures it);
* the balanced gain ``B = mean_m z_m`` (every reward counts once, whatever its scale);
* the worst reward ``W = min_m z_m`` (a method that buys one reward with another shows here).

Statistics across training seeds: the runs form a randomised block design (a training seed is a
block, each method a treatment). The residual of the additive model ``y = seed + method``
gives a pooled error variance with ``(K - 1)(S - 1)`` degrees of freedom (``K`` methods, ``S``
seeds); every comparison — a method against the reference, and the 2x2 effects (tree,
grouping, their interaction) when the methods form the 2x2 design — is a contrast of method
means tested with t quantiles at those degrees of freedom, with Holm's step-down correction
across the whole family. A verdict needs at least ``min_seeds`` seeds per method; with fewer
the minimum detectable effect is reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

POWER = 0.8  # of the minimum detectable effect


def standardised_gains(
    images: pd.DataFrame, spreads: dict[str, float], lower_is_better=(), base: str = "base"
) -> pd.DataFrame:
    """One row per model other than ``base``: for every reward ``m`` of ``spreads``, ``z_<m>``
    (the mean paired per-image gain over ``base`` divided by ``spreads[m]``, its sign flipped
    for the rewards in ``lower_is_better``, so that a positive z is always an improvement)
    and ``z_<m>_se``;
    ``B`` and ``B_se`` (the per-image mean of the z-gains, so its standard error is over test
    images) and ``W`` (the smallest ``z_m``). ``images``: one row per (model, line_id, seed)
    with a column per reward."""
    keys = ["line_id", "seed"]
    names = [m for m in spreads if m in images]
    reference = images[images.model == base].set_index(keys)[names]
    rows = []
    for model in sorted(set(images.model) - {base}):
        own = images[images.model == model].set_index(keys)[names]
        both = own.join(reference, rsuffix="_base", how="inner")
        sign = {m: -1.0 if m in lower_is_better else 1.0 for m in names}
        z = pd.DataFrame({m: sign[m] * (both[m] - both[f"{m}_base"]) / spreads[m] for m in names})
        row: dict = {"model": model, "images": len(z)}
        for m in names:
            row[f"z_{m}"], row[f"z_{m}_se"] = _mean_se(z[m].to_numpy())
        row["B"], row["B_se"] = _mean_se(z.mean(axis=1).to_numpy())
        finite = [row[f"z_{m}"] for m in names if np.isfinite(row[f"z_{m}"])]
        row["W"] = min(finite) if finite else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_se(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return float(values.mean()), float(se)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values ``[T]`` (NaNs stay NaN and are not counted)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class BlockFit:
    """The additive fit of a seeds x methods table: ``means`` per method, the pooled residual
    variance ``mse`` with ``df`` degrees of freedom, and ``seeds`` (complete blocks)."""

    means: pd.Series
    mse: float
    df: int
    seeds: int


def block_fit(table: pd.DataFrame) -> BlockFit:
    """``table``: seeds (rows) x methods (columns); only seeds with every method count."""
    complete = table.dropna()
    s, k = complete.shape
    if s == 0:
        return BlockFit(table.mean(), float("nan"), 0, 0)
    residual = complete.sub(complete.mean(axis=1), axis=0).sub(complete.mean(axis=0), axis=1)
    residual += complete.to_numpy().mean()
    df = (k - 1) * (s - 1)
    mse = float((residual.to_numpy() ** 2).sum() / df) if df > 0 else float("nan")
    return BlockFit(complete.mean(axis=0), mse, df, s)


def contrast(fit: BlockFit, coefficients: dict[str, float]) -> dict[str, float]:
    """``sum_j c_j mean_j`` with its standard error ``sqrt(mse sum c_j^2 / S)``, t, two-sided
    p (t with the fit's pooled degrees of freedom) and degrees of freedom."""
    estimate = float(sum(c * fit.means[m] for m, c in coefficients.items()))
    se = (
        float(np.sqrt(fit.mse * sum(c * c for c in coefficients.values()) / fit.seeds))
        if fit.seeds
        else np.nan
    )
    if fit.df > 0 and np.isfinite(se) and se > 0:
        t = estimate / se
        p = float(2 * stats.t.sf(abs(t), fit.df))
    else:
        t, p = float("nan"), float("nan")
    return {"estimate": estimate, "se": se, "t": t, "p": p, "df": fit.df}


def minimum_detectable_effect(se: float, df: int, alpha: float, power: float = POWER) -> float:
    """The smallest true difference a two-sided level-``alpha`` t test (``df`` degrees of
    freedom; the normal distribution when ``df`` is 0) detects with probability ``power``,
    for an estimate with standard error ``se``."""
    if df > 0:
        return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def two_by_two(design: dict[str, tuple[bool, bool]]) -> dict[str, dict[str, float]] | None:
    """The tree, grouping and interaction contrasts of a 2x2 design, or None.

    ``design``: method -> (has a tree, normalises each reward within its group). When exactly
    one method sits in each of the four cells: the tree effect (mean of the tree cells minus
    the flat ones), the grouping effect (likewise), and the interaction (the tree effect with
    grouping minus the tree effect without it).
    """
    cells = {}
    for method, cell in design.items():
        if cell in cells:
            return None
        cells[cell] = method
    if len(cells) != 4:
        return None
    f, g, t, tg = cells[(False, False)], cells[(False, True)], cells[(True, False)], cells[(True, True)]
    return {
        "tree": {t: 0.5, tg: 0.5, f: -0.5, g: -0.5},
        "grouping": {g: 0.5, tg: 0.5, f: -0.5, t: -0.5},
        "interaction": {tg: 1.0, g: -1.0, t: -1.0, f: 1.0},
    }


def comparisons(
    runs: pd.DataFrame,
    measures: list[str],
    reference: str,
    design: dict[str, tuple[bool, bool]],
    alpha: float,
    control: str | None = None,
) -> pd.DataFrame:
    """Every test of the comparison, one row each: ``measure``, ``comparison`` (``<method> -
    <reference>``, a 2x2 effect, or ``<grouping method> - <control>``), ``estimate``, ``se``,
    ``df``, ``t``, ``p``, ``p_holm`` (across all rows), ``significant`` (``p_holm < alpha``) and
    ``mde`` (the minimum detectable effect at ``alpha`` and :data:`POWER`). ``runs``: one row
    per run with ``method``, ``seed`` and the measures. ``control``: a flat mix-then-normalise
    method whose reward weights are reward grouping's effective ones; it sits outside the 2x2
    cells, and every flat grouping method is tested against it (grouping, not reweighting)."""
    rows = []
    effects = two_by_two({m: cell for m, cell in design.items() if m != control})
    grouped_flat = [m for m, (tree, grouping) in design.items() if grouping and not tree]
    for measure in [m for m in measures if m in runs]:
        table = runs.pivot_table(index="seed", columns="method", values=measure, aggfunc="first")
        fit = block_fit(table)
        tests = {
            f"{m} - {reference}": {m: 1.0, reference: -1.0}
            for m in table.columns
            if m != reference and reference in table.columns
        }
        if effects and all(m in table.columns for c in effects.values() for m in c):
            tests |= {f"2x2 {name}": c for name, c in effects.items()}
        if control in table.columns:
            tests |= {f"{m} - {control}": {m: 1.0, control: -1.0} for m in grouped_flat if m in table.columns}
        for name, coefficients in tests.items():
            result = contrast(fit, coefficients)
            result["mde"] = minimum_detectable_effect(result["se"], fit.df, alpha) if fit.df else np.nan
            rows.append({"measure": measure, "comparison": name, "seeds": fit.seeds} | result)
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["p_holm"] = holm(frame["p"].to_numpy())
        frame["significant"] = frame["p_holm"] < alpha
    return frame


def verdict(tests: pd.DataFrame, seeds: int, min_seeds: int, within_se: float, alpha: float) -> str:
    """One paragraph: the significant comparisons after Holm, when every method has at least
    ``min_seeds`` seeds; else "not enough seeds" with the minimum detectable effect on B (from
    the pooled fit with 2+ seeds; with one seed, from ``within_se``, the test-prompt standard
    error of one run's B, a lower bound because the run-to-run spread is unmeasured)."""
    if seeds < min_seeds:
        pairwise = (
            tests[(tests.measure == "B") & ~tests.comparison.str.startswith("2x2")] if len(tests) else tests
        )
        if len(pairwise) and np.isfinite(pairwise["mde"]).any():
            mde = float(pairwise["mde"].dropna().iloc[0])
            basis = f"from the spread across {seeds} seeds"
        else:
            mde = minimum_detectable_effect(np.sqrt(2) * within_se, 0, alpha)
            basis = "a lower bound from one run's test-prompt error; the run-to-run spread is unmeasured"
        return (
            f"Not enough seeds: {seeds} per method, a verdict needs {min_seeds} (train.seeds). "
            f"Minimum detectable difference in B between two methods: {mde:.2f} ({basis})."
        )
    found = tests[tests.significant] if len(tests) else tests
    if not len(found):
        return f"Across {seeds} seeds no comparison is significant at level {alpha} after Holm's correction."
    parts = [
        f"{row.comparison} on {row.measure}: {row.estimate:+.3f} ± {row.se:.3f} (Holm p = {row.p_holm:.3g})"
        for row in found.itertuples()
    ]
    return (
        f"Across {seeds} seeds, significant at level {alpha} after Holm's correction: "
        + "; ".join(parts)
        + "."
    )


def outcome_spreads(
    card: dict | None, images: pd.DataFrame, names: list[str]
) -> tuple[dict[str, float], str]:
    """Each reward's unit for z, and a sentence saying what it is: the base model's mean
    within-group std under the training sampler (the model card's SDE groups), or, where the
    card has none (backends other than mini), the base model's test-split std across images.
    A reward with no spread in either has no unit: it is left out of z, B and W, and said so."""
    groups = (card or {}).get("sde_groups", {})
    base = images[images.model == "base"]
    spreads, sources, dropped = {}, set(), []
    for name in names:
        group_std = float(groups.get(f"{name}_group_std", 0.0))
        test_std = float(base[name].std(ddof=1)) if name in base and len(base) > 1 else 0.0
        if group_std > 0:
            spreads[name] = group_std
            sources.add("the base model's mean within-group std of that reward under the training sampler")
        elif test_std > 0:
            spreads[name] = test_std
            sources.add("the base model's test-split std of that reward (no group spread on its card)")
        else:
            dropped.append(name)
    listed = ", ".join(f"{n} {v:.3f}" for n, v in spreads.items())
    text = " or ".join(sorted(sources)) + f" ({listed})"
    if dropped:
        text += f"; left out, with no spread at the base model: {', '.join(dropped)}"
    return spreads, text
