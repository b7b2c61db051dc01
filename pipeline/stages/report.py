"""Stage ``report``: the study's tables, training curves, the comparison and image grids.

    python -m pipeline.stages.report --rewards base=R.parquet --rewards flow_grpo/seed0=R.parquet ... \
        --samples ... --metrics flow_grpo/seed0=M.parquet ... --train-info flow_grpo/seed0=I.json ... \
        [--base-card figures.json] --config-json '{"report": ..., "methods": ..., ...}' --out-dir DIR

Writes ``index.html`` (self-contained: figures embedded; a headline table per model with each
metric's test mean, its paired change against the base model and the training trend; a red
banner for a stage cut short, an illegible base model, or training and test sampled at
different guidance; the comparison across training seeds — standardised gains z, balanced
gain B, worst reward W, the tests with Holm's correction and the verdict, and the same at
equal NFE; the full tables; samples labelled with their prompts and what OCR read),
``summary.csv`` / ``summary.parquet`` (one row per model), ``paired.csv``, ``stability.csv``,
``runs.csv``, ``methods.csv``, ``tests.csv``, ``equal_nfe.csv``, ``equal_nfe_tests.csv``,
``curves/<reward>.png`` and ``grid.png``. The tables come from :mod:`pipeline.reporting.tables`,
the statistics from :mod:`pipeline.reporting.analysis`, the figures from :mod:`pipeline.reporting.figures`
and the page from :mod:`pipeline.reporting.html`.
"""

from __future__ import annotations

import argparse
import io as stdio
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from pipeline.reporting.analysis import comparisons, outcome_spreads, standardised_gains, verdict
from pipeline.reporting.figures import curve_figure, grid_image, png_bytes, sample_cells
from pipeline.reporting.html import render_html, report_sections, study_notes, warnings_for
from pipeline.reporting.seeds import EQUAL_NFE_SUFFIX, method_table, run_table
from pipeline.reporting.tables import (
    comparison_view,
    headline_table,
    method_summary,
    missing_scores,
    paired_table,
    per_image_table,
    reward_metrics,
    stability_table,
    summary_table,
    trend_table,
)
from pipeline.rewards import REWARDS
from pipeline.runtime import io, tracking

# The balanced gain and worst reward (each reward in units of its spread), and the gain in
# flow_grpo's own objective, the mixed reward: B counts each reward's z once, which is what
# reward grouping optimises, so a verdict on B alone would favour the grouped arms.
MEASURES = ["B", "W", "mixed_gain"]


def pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        name, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"{flag} {item!r}: expected NAME=FILE")
        out[name] = Path(path)
    return out


def method_design(methods: dict) -> dict[str, tuple[bool, bool]]:
    """Method -> (has a tree, normalises each reward within its group) from the config."""
    return {
        name: (bool(m.get("branch_steps")), m.get("mixing") == "normalize_then_mix")
        for name, m in methods.items()
    }


def grouping_control(methods: dict) -> str | None:
    """The flat method weighted by 1 / each reward's spread (``inverse_std_weights``), if any."""
    controls = [
        name for name, m in methods.items() if m.get("inverse_std_weights") and not m.get("branch_steps")
    ]
    return controls[0] if controls else None


def comparison_tables(runs: pd.DataFrame, raw: dict) -> tuple[dict, dict[str, pd.DataFrame]]:
    """The comparison's reading views and verdict (:func:`report_sections`), and its CSV tables."""
    report, design = raw["report"], method_design(raw.get("methods", {}))
    control = grouping_control(raw.get("methods", {}))
    final = runs[runs.checkpoint == "final"] if len(runs) else runs
    methods = with_budget(method_table(final), final) if len(final) else pd.DataFrame()
    tests = (
        comparisons(final, MEASURES, report["reference_method"], design, report["alpha"], control)
        if len(final)
        else pd.DataFrame()
    )
    seeds = int(methods["seeds"].min()) if len(methods) else 0
    within = float(np.nanmedian(final["B_se"])) if "B_se" in final and len(final) else float("nan")
    view = {
        "methods": methods,
        "tests": tests,
        "verdict": verdict(tests, seeds, report["min_seeds"], within, report["alpha"]) if len(tests) else "",
    }
    reference = raw.get("evaluation", {}).get("equal_nfe_reference")
    equal = pd.DataFrame()
    if reference and len(runs) and (runs.checkpoint == "equal_nfe").any():
        flat = {m for m, (tree, _) in design.items() if not tree}
        chosen = runs[runs.method.isin(flat) == (runs.checkpoint == "equal_nfe")]
        equal = with_budget(method_table(chosen), chosen)
        equal_tests = comparisons(
            chosen, MEASURES, report["reference_method"], design, report["alpha"], control
        )
        view |= {"equal_methods": equal, "equal_tests": equal_tests, "equal_reference": reference}
    else:
        equal_tests = pd.DataFrame()
    tables = {"methods": methods, "tests": tests, "equal_nfe": equal, "equal_nfe_tests": equal_tests}
    return view, tables


BUDGET = ("training_nfe", "leaves_per_iteration", "sampling_nfe_per_iteration")


def with_budget(methods: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``methods`` with each method's mean over its ``runs`` of what it spent: the training NFE,
    and the leaves and sampling NFE of one iteration (equal across arms by reinvestment)."""
    for column in [c for c in BUDGET if c in runs]:
        spent = runs.groupby("method")[column].mean()
        methods[column] = spent.reindex(methods.method).to_numpy()
    return methods


def rollout_budget(runs: pd.DataFrame, metrics: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """``runs`` with each run's median leaves and sampling NFE per iteration (from its trained
    run's metrics; NaN where the metrics predate the ``leaves`` column)."""
    runs = runs.copy()
    for column, source in (
        ("leaves_per_iteration", "leaves"),
        ("sampling_nfe_per_iteration", "nfe_sampling"),
    ):
        values = []
        for run in runs.run:
            table = metrics.get(run.removesuffix(EQUAL_NFE_SUFFIX), pd.DataFrame())
            values.append(float(table[source].median()) if source in table and len(table) else np.nan)
        runs[column] = values
    return runs


def training_nfe(runs: pd.DataFrame, infos: dict[str, dict], samples: dict[str, pd.DataFrame]) -> list[float]:
    """Each run's training NFE: its final cumulative NFE, or its snapshot's (equal NFE)."""
    values = []
    for run, checkpoint in zip(runs.run, runs.checkpoint, strict=True):
        if checkpoint == "equal_nfe" and run in samples and "training_nfe" in samples[run]:
            values.append(float(samples[run]["training_nfe"].iloc[0]))
        else:
            values.append(float(infos.get(run, {}).get("nfe_cumulative", np.nan)))
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rewards", action="append", required=True, help="MODEL=rewards.parquet")
    parser.add_argument("--samples", action="append", required=True, help="MODEL=samples.parquet")
    parser.add_argument("--metrics", action="append", default=[], help="RUN=metrics.parquet")
    parser.add_argument("--probe", action="append", default=[], help="RUN=probe.parquet")
    parser.add_argument("--train-info", action="append", default=[], help="RUN=train_info.json")
    parser.add_argument("--base-info", type=Path, default=None, help="the base model's train_info.json")
    parser.add_argument("--base-card", type=Path, default=None, help="the base model card's figures.json")
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
    card = json.loads(args.base_card.read_text()) if args.base_card else None
    scored = set(rewards.reward)
    reward_names = [r for r in REWARDS if r in scored] + sorted(scored - set(REWARDS))

    with tracking.stage_run(args, raw) as run:
        weights = raw.get("train", {}).get("reward_weights", {})
        images = per_image_table(rewards, weights)
        summary = summary_table(images, infos, missing_scores(rewards))
        has_base = "base" in set(images.model)
        paired = paired_table(images) if has_base else pd.DataFrame()
        stability = stability_table(metrics, probes, reward_names)
        spreads, spread_text = outcome_spreads(card, images, reward_names) if has_base else ({}, "")
        lower_is_better = [n for n in reward_names if n in REWARDS and not REWARDS[n].higher_is_better]
        standardised = standardised_gains(images, spreads, lower_is_better) if has_base else pd.DataFrame()
        runs = run_table(paired, standardised, stability, weights)
        if len(runs):
            runs["training_nfe"] = training_nfe(runs, infos, samples)
            runs = rollout_budget(runs, metrics)
        comparison, csv_tables = comparison_tables(runs, raw)
        comparison["spreads"] = spread_text
        curves = {r: png_bytes(curve_figure(metrics, probes, r)) for r in reward_names} if metrics else {}
        # Images are shown only from inside the study's results folder (report/ sits in it).
        allowed, roots = args.out_dir.parent, {m: p.parent for m, p in sample_paths.items()}
        grid = grid_image(samples, roots, raw["report"]["grid_prompts"], allowed)
        buffer = stdio.BytesIO()
        Image.fromarray(grid).save(buffer, format="png")
        io.write_text(args.out_dir / "summary.csv", summary.to_csv(index=False))
        io.write_parquet(
            args.out_dir / "summary.parquet", pa.Table.from_pandas(summary, preserve_index=False)
        )
        io.write_text(args.out_dir / "stability.csv", stability.to_csv(index=False))
        io.write_text(args.out_dir / "paired.csv", paired.to_csv(index=False))
        io.write_text(args.out_dir / "runs.csv", runs.to_csv(index=False))
        for name, table in csv_tables.items():
            io.write_text(args.out_dir / f"{name}.csv", table.to_csv(index=False))
        (args.out_dir / "curves").mkdir(parents=True, exist_ok=True)  # a declared output, if empty
        for name, data in [
            *((f"curves/{r}.png", d) for r, d in curves.items()),
            ("grid.png", buffer.getvalue()),
        ]:
            with io.atomic_path(args.out_dir / name) as tmp:
                tmp.write_bytes(data)
        base_info = json.loads(args.base_info.read_text()) if args.base_info else None
        shown = [m for m in ("mixed", *reward_metrics(reward_names)) if m in summary]
        headline = headline_table(summary, paired, shown)
        trends = trend_table(stability, reward_names) if len(stability) else pd.DataFrame()
        samples_html = sample_cells(samples, roots, rewards, raw["report"]["grid_prompts"], allowed)
        warnings = warnings_for(raw, summary, infos, base_info)
        for warning in warnings:
            print(f"WARNING: {warning}")
        if comparison["verdict"]:
            print(f"Verdict: {comparison['verdict']}")
        readable = dict(comparison)
        readable["methods"] = (
            method_summary(comparison["methods"], reward_names) if len(comparison["methods"]) else None
        )
        readable["tests"] = comparison_view(comparison["tests"])
        if "equal_methods" in comparison:
            readable["equal_methods"] = method_summary(comparison["equal_methods"], reward_names)
            readable["equal_tests"] = comparison_view(comparison["equal_tests"])
        page = render_html(
            raw["report"]["title"],
            study_notes(raw),
            warnings,
            report_sections(
                headline, readable, trends, summary, paired, stability, base_info, raw, samples_html
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
