"""The report page: notes and warnings, the sections (each table with a caption that says
what is better) and the self-contained HTML around them."""

from __future__ import annotations

import base64
import html

import pandas as pd

from pipeline.reporting.tables import metric_label, reward_metrics

# Below this test OCR reward the base model draws no legible text, and RL has nothing to work on.
ILLEGIBLE_OCR = 0.05


def html_table(frame: pd.DataFrame) -> str:
    """A table that scrolls inside its own box when wider than the page."""
    table = frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0, classes="t", na_rep="")
    return f'<div class="scroll">{table}</div>'


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
        ".missing{max-width:180px;padding:4px;background:#ddd;color:#700;font-size:12px}"
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
    comparison: dict[str, str | pd.DataFrame],
    trends: pd.DataFrame,
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    stability: pd.DataFrame,
    base_info: dict | None,
    raw: dict,
    samples_html: str,
) -> dict[str, str]:
    """The report's sections (id -> HTML), each table with a caption that says what is better.

    ``comparison``: ``methods`` and ``tests`` (reading views, final checkpoints), ``verdict``,
    ``spreads`` (a sentence on the z units), and optionally ``equal_methods``, ``equal_tests``
    and ``equal_reference`` (the equal-NFE comparison)."""
    sections = {
        "headline": "<h2>Headline</h2><p class='caption'>Test split, per model: each metric's mean "
        "(higher is better) and, in brackets, its change against the base model paired per image "
        "(mean ± standard error; ▲ / ▼: beyond 2 standard errors).</p>"
        + html_table(headline)
        + "<p class='caption'>Training, per method: the change over the run of a line fitted to the "
        "rollouts' per-iteration mean reward, ± its standard error (higher is better; ▲: a rise beyond "
        "2 standard errors).</p>" + html_table(trends),
    }
    methods = comparison.get("methods")
    if methods is not None and len(methods):
        base = summary[summary.model == "base"]
        base_means = ", ".join(
            f"{html.escape(metric_label(m))} {base[m].iloc[0]:.3f}"
            for m in reward_metrics(raw["rewards"]["score"])
            if m in base and len(base)
        )
        start = f"<p class='caption'>Every run starts from the base model: test {base_means}.</p>"
        section = (
            "<h2>The comparison</h2>"
            + (start if base_means else "")
            + "<p class='caption'>Per method, the mean over its training seeds ± "
            "the standard error across them ((1 run): one seed, so the run's own error over test "
            "images). <b>z</b>: a reward's paired test gain over the base model in units of "
            f"{html.escape(str(comparison['spreads']))}; <b>B</b>: the mean of the z over the rewards "
            "(each counts once); <b>W</b>: the smallest z (a method that buys one reward with another "
            "shows here). Higher is better. The mixed-reward gain is flow_grpo's own objective, shown "
            "second. <a href='methods.csv'>methods.csv</a>, <a href='runs.csv'>runs.csv</a>.</p>"
            + html_table(methods)
            + "<p class='caption'>Tests across training seeds (a seed is a block): each method against "
            "the reference and, when the four methods form the 2x2 design, the tree effect, the grouping "
            "effect and their interaction; t with the pooled residual degrees of freedom, Holm's "
            "correction across every row; MDE: the smallest difference detected with 80% power. "
            "<a href='tests.csv'>tests.csv</a>.</p>"
            + html_table(comparison["tests"])
            + f"<p class='verdict'><b>Verdict:</b> {html.escape(str(comparison['verdict']))}</p>"
        )
        equal = comparison.get("equal_methods")
        if equal is not None and len(equal):
            section += (
                "<h3>At equal NFE</h3><p class='caption'>The methods without a tree evaluated at their "
                "training snapshot whose cumulative NFE is nearest the final NFE of "
                f"{html.escape(str(comparison['equal_reference']))}; the tree methods at their end. "
                "<a href='equal_nfe.csv'>equal_nfe.csv</a>, "
                "<a href='equal_nfe_tests.csv'>equal_nfe_tests.csv</a>.</p>"
                + html_table(equal)
                + html_table(comparison["equal_tests"])
            )
        sections["comparison"] = section
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
                        metric_label(m): f"{base[m].iloc[0]:.3f}"
                        for m in reward_metrics(raw["rewards"]["score"])
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


def warnings_for(
    raw: dict, summary: pd.DataFrame, infos: dict[str, dict], base_info: dict | None
) -> list[str]:
    """Plain sentences for everything that makes the study's numbers suspect: a stage cut short
    by its time guard, missing scores, an illegible base model."""
    warnings = []
    if base_info is not None and "pretrain" in raw:
        done, wanted = base_info.get("steps", 0), raw["pretrain"]["steps"]
        if done < wanted:
            warnings.append(
                f"Pretraining was cut short: {done} of {wanted} steps (its time guard, "
                "pretrain.max_minutes, tripped with on_time_limit: stop)."
            )
    if "train" in raw:
        wanted = raw["train"]["iterations"]
        for method, info in sorted(infos.items()):
            if info.get("iterations", 0) < wanted:
                warnings.append(
                    f"Training of {method} was cut short: {info.get('iterations', 0)} of {wanted} iterations "
                    "(its time guard, train.max_minutes, tripped with on_time_limit: stop)."
                )
    sampling = raw.get("sampling", {})
    if "train" in raw and sampling and sampling.get("guidance") != raw["train"].get("guidance"):
        warnings.append(
            f"Training and test sample differently: rollouts at guidance {raw['train'].get('guidance')}, "
            f"the test split at {sampling.get('guidance')} (sampling.guidance); a method's effect can "
            "hide or reverse between the two."
        )
    missing = summary[summary["missing_scores"] > 0] if "missing_scores" in summary else summary.iloc[:0]
    if len(missing):
        counts = ", ".join(f"{row.model} {row.missing_scores}" for row in missing.itertuples())
        warnings.append(
            f"{int(missing.missing_scores.sum())} test scores are missing ({counts}): an unreadable image or "
            "a reward that returned no finite score (the reason column of each rewards.parquet); every "
            "mean leaves them out."
        )
    base = summary[summary.model == "base"]
    if "ocr" in summary and len(base) and base["ocr"].iloc[0] < ILLEGIBLE_OCR:
        warnings.append(
            f"The base model is illegible: test OCR reward {base['ocr'].iloc[0]:.3f} "
            f"(below {ILLEGIBLE_OCR}); no method can be judged on it."
        )
    return warnings
