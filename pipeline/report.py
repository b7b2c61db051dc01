"""Stage ``report``: the study's tables, training curves, stability view and image grids.

    python -m pipeline.report --rewards base=R.parquet --rewards flow_grpo=R.parquet ... \
        --metrics flow_grpo=M.parquet ... --train-info flow_grpo=I.json ... \
        --config-json '{"report": ..., "study": ...}' --out-dir DIR

Writes ``index.html`` (self-contained: figures embedded; a headline table per model with
each metric's test mean, its paired change against the base model and the training trend; a
red banner for a stage cut short or an illegible base model; the full tables; samples
labelled with their prompts and what OCR read), ``summary.csv`` / ``summary.parquet``
(one row per model: evaluation rewards, accuracies, NFE and training time, with the spread
across evaluation seeds), ``stability.csv``, ``curve_<reward>.png`` (training curves of every
method against iteration and cumulative NFE) and ``grid.png`` (the same prompts and seed for
every model).
"""

from __future__ import annotations

import argparse
import base64
import html
import io as stdio
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline import io, tracking  # noqa: E402
from pipeline.evaluation import image_grid  # noqa: E402
from pipeline.seeds import method_table, run_table, split_run, verdict  # noqa: E402

REWARD_LABELS = {
    "ocr": "OCR reward",
    "color": "colour reward",
    "quality": "quality (0-10)",
    "pickscore": "PickScore",
}
METRIC_LABELS = REWARD_LABELS | {
    "mixed": "mixed reward",
    "ocr_exact": "OCR exact match",
    "color_accuracy": "colour accuracy",
}


def pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"{flag} {item!r}: expected NAME=FILE")
        out[name] = Path(path)
    return out


def per_image_table(rewards: pd.DataFrame, weights: dict[str, float] | None = None) -> pd.DataFrame:
    """Long rewards table -> one row per image: a score column per reward plus accuracies, and
    ``mixed`` (``sum_m w_m r_m``, the reward the methods optimise) when every reward with a
    non-zero weight in ``weights`` was scored."""
    keys = ["model", "line_id", "seed"]
    wide = rewards.pivot_table(index=keys, columns="reward", values="score", aggfunc="first").reset_index()
    weighted = {name: w for name, w in (weights or {}).items() if w != 0}
    if weighted and all(name in wide for name in weighted):
        wide["mixed"] = sum(w * wide[name] for name, w in weighted.items())
    if "ocr" in set(rewards.reward):
        ocr = rewards[rewards.reward == "ocr"].set_index(keys)["ocr_exact"].astype(float).rename("ocr_exact")
        wide = wide.join(ocr, on=keys)
    if "color" in set(rewards.reward):
        color = rewards[rewards.reward == "color"].set_index(keys)
        wide = wide.join(
            (color["color_pred"] == color["color"]).astype(float).rename("color_accuracy"), on=keys
        )
    return wide


def summary_table(images: pd.DataFrame, infos: dict[str, dict]) -> pd.DataFrame:
    """Per model: mean over images within each seed, then mean and std across seeds."""
    metrics = [c for c in images.columns if c not in ("model", "line_id", "seed")]
    per_seed = images.groupby(["model", "seed"])[metrics].mean()
    mean, spread = per_seed.groupby("model").mean(), per_seed.groupby("model").std(ddof=0)
    table = mean.join(spread.add_suffix("_seed_std"))
    table["seeds"] = per_seed.groupby("model").size()
    table["training_nfe"] = [infos.get(m, {}).get("nfe_cumulative", 0) for m in table.index]
    table["training_minutes"] = [round(infos.get(m, {}).get("train_seconds", 0) / 60, 2) for m in table.index]
    table["iterations"] = [infos.get(m, {}).get("iterations", 0) for m in table.index]
    order = ["base"] + sorted(m for m in table.index if m != "base")
    return table.loc[[m for m in order if m in table.index]].reset_index()


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


# Below this test OCR reward the base model draws no legible text, and RL has nothing to work on.
ILLEGIBLE_OCR = 0.05


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
            row[METRIC_LABELS.get(metric, metric)] = cell
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
            row[REWARD_LABELS.get(name, "mixed reward")] = cell or "too few iterations (a trend needs 3)"
        rows.append(row)
    return pd.DataFrame(rows)


def seed_summary(methods: pd.DataFrame, rewards: list[str]) -> pd.DataFrame:
    """The per-method table of :func:`pipeline.seeds.method_table` for reading: each figure as
    ``mean ± SE`` (:func:`format_change`), the SE across seeds, or marked ``(1 run)`` when it is
    the one run's own."""

    def cell(row: pd.Series, figure: str) -> str:
        if figure not in row or not np.isfinite(row[figure]):
            return ""
        if figure == "nfe_to_target":
            se = row[f"{figure}_se"]
            text = f"{row[figure]:,.0f}" + (f" ± {se:,.0f}" if np.isfinite(se) else "")
            return f"{text} ({int(row['reached'])} of {int(row['seeds'])} seeds)"
        text = format_change(row[figure], row[f"{figure}_se"]) or f"{row[figure]:+.3f}"
        return text + (" (1 run)" if row[f"{figure}_se_source"] == "one run" else "")

    rows = []
    for _, row in methods.iterrows():
        out = {"method": row["method"], "seeds": int(row["seeds"])}
        out["test mixed gain"] = cell(row, "mixed_gain")
        for name in rewards:
            out[f"test {REWARD_LABELS.get(name, name)} gain"] = cell(row, f"{name}_gain")
        out["worst weighted reward gain"] = cell(row, "worst_gain")
        out["training trend (mixed)"] = cell(row, "trend")
        if "nfe_to_target" in row:
            out["NFE to the reference's final reward"] = cell(row, "nfe_to_target") or "not reached"
        rows.append(out)
    return pd.DataFrame(rows)


def warnings_for(
    raw: dict, summary: pd.DataFrame, infos: dict[str, dict], base_info: dict | None
) -> list[str]:
    """Plain sentences for everything that makes the study's numbers suspect: a stage cut short
    by its time guard, an illegible base model."""
    warnings = []
    if base_info is not None and "pretrain" in raw:
        done, wanted = base_info.get("steps", 0), raw["pretrain"]["steps"]
        if done < wanted:
            warnings.append(
                f"Pretraining was cut short: {done} of {wanted} steps (its time guard, "
                f"pretrain.max_minutes = {raw['pretrain']['max_minutes']}, tripped with on_time_limit: stop)."
            )
    if "train" in raw:
        wanted = raw["train"]["iterations"]
        for method, info in sorted(infos.items()):
            if info.get("iterations", 0) < wanted:
                warnings.append(
                    f"Training of {method} was cut short: {info.get('iterations', 0)} of {wanted} iterations "
                    f"(train.max_minutes = {raw['train']['max_minutes']}, tripped with on_time_limit: stop)."
                )
    base = summary[summary.model == "base"]
    if "ocr" in summary and len(base) and base["ocr"].iloc[0] < ILLEGIBLE_OCR:
        warnings.append(
            f"The base model is illegible: test OCR reward {base['ocr'].iloc[0]:.3f} "
            f"(below {ILLEGIBLE_OCR}); no method can be judged on it."
        )
    return warnings


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


def curve_figure(
    metrics: dict[str, pd.DataFrame], probes: dict[str, pd.DataFrame], reward: str
) -> plt.Figure:
    """One reward's training mean (solid: the seeds' mean of each run's 3-iteration mean, with
    a band of ± one standard error across seeds where there are several) and the fixed probe
    batch's mean (dashed, dots; seeds averaged) against iteration (left) and cumulative NFE
    (right), one colour per method. ``metrics`` and ``probes`` are keyed by run."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    column = f"{reward}_mean"
    by_method: dict[str, list[str]] = {}
    for run in sorted(metrics):
        by_method.setdefault(split_run(run)[0], []).append(run)
    for index, (method, runs) in enumerate(by_method.items()):
        color = f"C{index}"
        tables = [metrics[run] for run in runs if column in metrics[run]]
        if tables:
            curve = seed_mean_curve(tables, column)
            label = f"{method} ({len(tables)} seeds)" if len(tables) > 1 else method
            for axis, x in zip(axes, (curve["iteration"], curve["nfe"]), strict=True):
                axis.plot(x, curve["mean"], color=color, label=label)
                if curve["se"].notna().any():
                    axis.fill_between(
                        x, curve["mean"] - curve["se"], curve["mean"] + curve["se"], color=color, alpha=0.2
                    )
        probe_tables = [probes[run] for run in runs if column in probes.get(run, pd.DataFrame())]
        if probe_tables:
            probe = pd.concat(probe_tables).groupby("iteration")[[column, "nfe_cumulative"]].mean()
            probe = probe.reset_index()
            axes[0].plot(probe["iteration"], probe[column], "o--", color=color, markersize=3)
            axes[1].plot(probe["nfe_cumulative"], probe[column], "o--", color=color, markersize=3)
    axes[0].set_xlabel("iteration")
    axes[1].set_xlabel("cumulative NFE (sampling + training rows)")
    axes[0].set_ylabel(f"training {REWARD_LABELS.get(reward, reward)}")
    axes[0].set_title("solid: rollouts; dashed: fixed probe prompts (ODE)", fontsize=9)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    return figure


def png_bytes(figure: plt.Figure) -> bytes:
    buffer = stdio.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def grid_image(samples: dict[str, pd.DataFrame], roots: dict[str, Path], n_prompts: int) -> np.ndarray:
    """Columns = models, rows = the first ``n_prompts`` test prompts, first seed."""
    models = ["base"] + sorted(m for m in samples if m != "base")
    first = samples[models[0]]
    lines = list(first[first.seed == first.seed.min()].line_id[:n_prompts])
    columns = []
    for model in models:
        table = samples[model].set_index(["line_id", "seed"])
        seed = samples[model].seed.min()
        images = [
            np.asarray(Image.open(roots[model] / table.loc[(line, seed), "image_path"]).convert("RGB"))
            for line in lines
        ]
        columns.append(image_grid(np.stack(images), 1))
    gap = np.full((columns[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([c for column in columns for c in (column, gap)][:-1], axis=1)


def html_table(frame: pd.DataFrame) -> str:
    """A table that scrolls inside its own box when wider than the page."""
    table = frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="t", na_rep="")
    return f'<div class="scroll">{table}</div>'


def sample_cells(
    samples: dict[str, pd.DataFrame], roots: dict[str, Path], rewards: pd.DataFrame, n_prompts: int
) -> str:
    """HTML grid: a row per test prompt (its text as the row label), a column per model, each
    image with what OCR read in it underneath (first seed)."""
    models = ["base"] + sorted(m for m in samples if m != "base")
    first = samples[models[0]]
    seed = first.seed.min()
    rows = first[first.seed == seed].head(n_prompts)
    readings = rewards[rewards.reward == "ocr"].set_index(["model", "line_id", "seed"])["ocr_text"]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    indexed = {model: samples[model].set_index(["line_id", "seed"]) for model in models}
    body = []
    for _, prompt_row in rows.iterrows():
        cells = []
        for model in models:
            path = roots[model] / indexed[model].loc[(prompt_row.line_id, seed), "image_path"]
            data = base64.b64encode(path.read_bytes()).decode()
            read = readings.get((model, prompt_row.line_id, seed), "")
            read = "—" if read is None or (isinstance(read, float) and np.isnan(read)) else read
            cells.append(
                f'<td><img alt="{html.escape(model)}" src="data:image/png;base64,{data}">'
                f"<div class='read'>read: {html.escape(str(read) or '(nothing)')}</div></td>"
            )
        body.append(f"<tr><th class='prompt'>{html.escape(str(prompt_row.prompt))}</th>{''.join(cells)}</tr>")
    table = f"<table class='samples'><tr><th>prompt</th>{head}</tr>{''.join(body)}</table>"
    return f"<div class='scroll'>{table}</div>"


def render_html(
    title: str,
    notes: str,
    warnings: list[str],
    sections: dict[str, str],
    curves: dict[str, bytes],
) -> str:
    """The page: a banner for every warning, the notes, then ``sections`` (id -> HTML) in
    order with the curves after the headline; styled to fit a 1280 px window."""

    def img(data: bytes, alt: str) -> str:
        return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    banner = "".join(f'<div class="banner">{html.escape(w)}</div>' for w in warnings)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1180px;margin:2em auto;padding:0 1em}"
        ".scroll{overflow-x:auto;max-width:100%}"
        "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;"
        "border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}"
        "table.t th{white-space:normal;vertical-align:bottom}"
        "table.samples{border-collapse:collapse;font-size:12px}table.samples td,table.samples th"
        "{padding:4px;border-bottom:1px solid #eee;vertical-align:top}"
        "th.prompt{max-width:260px;font-weight:normal;text-align:left}.read{font-family:monospace}"
        ".caption{color:#444;font-size:13px;margin:.2em 0 .6em}"
        ".banner{background:#b00020;color:white;font-weight:bold;padding:.8em 1em;margin:.5em 0;"
        "border-radius:4px}img{max-width:100%}details{margin:1em 0}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        banner,
        f"<p>{notes}</p>",
    ]
    for section_id, content in sections.items():
        parts.append(f'<section id="{section_id}">{content}</section>')
        if section_id == "headline" and curves:
            parts.append('<section id="curves"><h2>Training curves</h2>')
            parts.append(
                "<p class='caption'>Higher is better. Solid: the rollouts' mean reward per iteration "
                "(3-iteration mean), averaged over the method's training seeds with a band of ± one "
                "standard error across them (none with one seed); dashed with dots: the fixed probe "
                "prompts (ODE).</p>"
            )
            parts.extend(img(data, f"curve {name}") for name, data in curves.items())
            parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def report_sections(
    headline: pd.DataFrame,
    seeds_view: pd.DataFrame,
    seed_verdict: str,
    trends: pd.DataFrame,
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    stability: pd.DataFrame,
    base_info: dict | None,
    raw: dict,
    samples_html: str,
) -> dict[str, str]:
    """The report's sections (id -> HTML), each table with a caption that says what is better."""
    sections = {
        "headline": "<h2>Headline</h2><p class='caption'>Test split, per model: each metric's mean "
        "(higher is better) and, in brackets, its change against the base model paired per image "
        "(mean ± standard error; ▲ / ▼: beyond 2 standard errors).</p>"
        + html_table(headline)
        + "<p class='caption'>Training, per method: the change over the run of a line fitted to the "
        "rollouts' per-iteration mean reward, ± its standard error (higher is better; ▲: a rise beyond "
        "2 standard errors).</p>" + html_table(trends),
    }
    if len(seeds_view):
        sections["seeds"] = (
            "<h2>Methods across training seeds</h2><p class='caption'>Per method, the mean over its "
            "training seeds ± the standard error across them ((1 run): one seed, so the run's own "
            "standard error, over test prompts or of the fitted trend). Gains are paired per test "
            "prompt against the base model; the worst weighted reward gain is the smallest of "
            "w<sub>m</sub> × gain<sub>m</sub> over the rewards (the units each adds to the mixed reward); "
            "NFE to the reference's final reward: the first cumulative NFE at which a run's rolling "
            "mean training reward reaches the reference method's final one (higher gains, lower NFE "
            "are better). <a href='methods.csv'>methods.csv</a>, <a href='runs.csv'>runs.csv</a>.</p>"
            + html_table(seeds_view)
            + f"<p class='verdict'><b>Verdict:</b> {html.escape(seed_verdict)}</p>"
        )
    if base_info is not None:
        wanted = raw.get("pretrain", {}).get("steps", "?")
        base = summary[summary.model == "base"]
        figures = pd.DataFrame(
            [
                {
                    "pretraining steps done": base_info.get("steps"),
                    "configured": wanted,
                    "minutes": round(base_info.get("train_seconds", 0) / 60, 1),
                    **{
                        METRIC_LABELS.get(m, m): f"{base[m].iloc[0]:.3f}"
                        for m in ("ocr", "ocr_exact", "color", "color_accuracy")
                        if m in base and len(base)
                    },
                }
            ]
        )
        sections["base-model"] = (
            "<h2>Base model</h2><p class='caption'>The pretrained mini model every method starts from "
            "(test split; higher is better; steps done should equal the configured steps).</p>"
            + html_table(figures)
        )
    sections["tables"] = (
        "<h2>Full tables</h2>"
        "<details open><summary>Evaluation summary (<a href='summary.csv'>summary.csv</a>)</summary>"
        "<p class='caption'>Per model: test-split means (higher is better), their spread across evaluation "
        "seeds (<code>*_seed_std</code>), training NFE and minutes.</p>"
        + html_table(summary)
        + "</details><details><summary>Paired against the base model (<a href='paired.csv'>paired.csv</a>)"
        "</summary><p class='caption'>Mean per-image difference to the base model on the same prompt and "
        "seed (<code>*_diff</code>, positive is better) and its standard error (<code>*_diff_se</code>).</p>"
        + html_table(paired)
        + "</details><details><summary>Training stability (<a href='stability.csv'>stability.csv</a>)"
        "</summary><p class='caption'>Start and end: means of the first and last quarter of the iterations "
        "(<code>probe_*</code>: the fixed probe prompts before the first and after the last update); "
        "<code>trend</code>: change over the run of a line fitted to the per-iteration means, with its "
        "standard error (<code>trend_se</code>), higher is better and a rise within two standard errors "
        "is noise; <code>iteration_std</code>: spread of the per-iteration means; zero-variance groups "
        "carry no signal (lower is better).</p>" + html_table(stability) + "</details>"
    )
    sections["samples"] = (
        "<h2>Samples</h2><p class='caption'>The same test prompts and seed for every model, with what "
        "OCR read under each image (the target is the quoted text, in the named colour).</p>" + samples_html
    )
    return sections


MINI_NOTE = """This is the <b>default CPU study</b>: the base model is the project's own ~4.6M-parameter
pixel-space mini model, pretrained by the workflow for minutes on rendered single words (one font,
fixed layout), standing in for SD3.5-Medium. Its numbers show that the pipeline and the four methods
work end to end; they are not the paper's results and say little about how the methods rank at
scale."""
QUALITY_NOTE = """<b>quality</b> is a reference-free legibility score (contrast, clean background, crisp
strokes; 0-10) standing in for PickScore, whose weights are not shipped; it is not a
human-preference model."""
NFE_NOTE = "NFE counts transformer rows (a guided evaluation counts twice), sampling and training together."


def study_notes(raw: dict) -> str:
    """What this study is and is not, stated plainly at the top of the report."""
    backend, scored = raw["model"]["backend"], raw["rewards"]["score"]
    notes = [MINI_NOTE] if backend == "mini" else []
    if "quality" in scored and "pickscore" not in scored:
        notes.append(QUALITY_NOTE)
    return " ".join([*notes, NFE_NOTE])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", action="append", required=True, help="MODEL=rewards.parquet")
    parser.add_argument("--samples", action="append", required=True, help="MODEL=samples.parquet")
    parser.add_argument("--metrics", action="append", default=[], help="METHOD=metrics.parquet")
    parser.add_argument("--probe", action="append", default=[], help="METHOD=probe.parquet")
    parser.add_argument("--train-info", action="append", default=[], help="METHOD=train_info.json")
    parser.add_argument("--base-info", type=Path, default=None, help="the base model's train_info.json")
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json)
    rewards = pd.concat(
        [pd.read_parquet(p).assign(model=m) for m, p in pairs(args.rewards, "--rewards").items()]
    )
    sample_paths = pairs(args.samples, "--samples")
    samples = {m: pd.read_parquet(p) for m, p in sample_paths.items()}
    metrics = {m: pd.read_parquet(p) for m, p in pairs(args.metrics, "--metrics").items()}
    probes = {m: pd.read_parquet(p) for m, p in pairs(args.probe, "--probe").items()}
    infos = {m: json.loads(p.read_text()) for m, p in pairs(args.train_info, "--train-info").items()}
    reward_names = [r for r in REWARD_LABELS if r in set(rewards.reward)]

    with tracking.stage_run(args, raw) as run:
        weights = raw.get("train", {}).get("reward_weights", {})
        images = per_image_table(rewards, weights)
        summary = summary_table(images, infos)
        paired = paired_table(images) if "base" in set(images.model) else pd.DataFrame()
        stability = stability_table(metrics, probes, reward_names)
        reference = raw["report"]["reference_method"]
        runs = run_table(paired, stability, metrics, weights, reference) if metrics else pd.DataFrame()
        methods = method_table(runs) if len(runs) else pd.DataFrame()
        seed_verdict = verdict(methods, reference) if len(methods) else ""
        curves = {r: png_bytes(curve_figure(metrics, probes, r)) for r in reward_names} if metrics else {}
        grid = grid_image(
            samples, {m: p.parent for m, p in sample_paths.items()}, raw["report"]["grid_prompts"]
        )
        buffer = stdio.BytesIO()
        Image.fromarray(grid).save(buffer, format="png")
        io.write_text(args.out_dir / "summary.csv", summary.to_csv(index=False))
        io.write_parquet(
            args.out_dir / "summary.parquet", pa.Table.from_pandas(summary, preserve_index=False)
        )
        io.write_text(args.out_dir / "stability.csv", stability.to_csv(index=False))
        io.write_text(args.out_dir / "paired.csv", paired.to_csv(index=False))
        io.write_text(args.out_dir / "runs.csv", runs.to_csv(index=False))
        io.write_text(args.out_dir / "methods.csv", methods.to_csv(index=False))
        for name, data in [
            *((f"curve_{r}.png", d) for r, d in curves.items()),
            ("grid.png", buffer.getvalue()),
        ]:
            with io.atomic_path(args.out_dir / name) as tmp:
                tmp.write_bytes(data)
        base_info = json.loads(args.base_info.read_text()) if args.base_info else None
        shown = [
            m
            for m in ("mixed", "ocr", "ocr_exact", "color", "color_accuracy", "quality", "pickscore")
            if m in summary
        ]
        headline = headline_table(summary, paired, shown)
        trends = trend_table(stability, reward_names) if len(stability) else pd.DataFrame()
        samples_html = sample_cells(
            samples, {m: p.parent for m, p in sample_paths.items()}, rewards, raw["report"]["grid_prompts"]
        )
        warnings = warnings_for(raw, summary, infos, base_info)
        for warning in warnings:
            print(f"WARNING: {warning}")
        if seed_verdict:
            print(f"Verdict: {seed_verdict}")
        page = render_html(
            raw["report"]["title"],
            study_notes(raw),
            warnings,
            report_sections(
                headline,
                seed_summary(methods, reward_names) if len(methods) else pd.DataFrame(),
                seed_verdict,
                trends,
                summary,
                paired,
                stability,
                base_info,
                raw,
                samples_html,
            ),
            curves,
        )
        io.write_text(args.out_dir / "index.html", page)
        for column in summary.columns:
            if column != "model" and pd.api.types.is_numeric_dtype(summary[column]):
                run.log_metrics(
                    {f"{m}.{column}": float(v) for m, v in zip(summary.model, summary[column], strict=True)}
                )
        for name in ("index.html", "summary.csv", "grid.png"):
            run.log_artifact(args.out_dir / name)
    print(summary.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
