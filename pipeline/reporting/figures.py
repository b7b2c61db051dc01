"""The report's figures: training curves, the sample grid and the labelled sample cells."""

from __future__ import annotations

import base64
import html
import io as stdio
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.data.images import image_grid  # noqa: E402
from pipeline.reporting.seeds import split_run  # noqa: E402
from pipeline.reporting.tables import metric_label, seed_mean_curve  # noqa: E402


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
    axes[0].set_ylabel(f"training {metric_label(reward)}")
    axes[0].set_title("solid: rollouts; dashed: fixed probe prompts (ODE)", fontsize=9)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    return figure


def png_bytes(figure: plt.Figure) -> bytes:
    buffer = stdio.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return buffer.getvalue()


def embeddable_image(path: Path, allowed: Path) -> tuple[bytes | None, str]:
    """The bytes of image ``path`` if the report may show it, else ``(None, reason)``.

    Only images inside ``allowed`` (the study's results folder; symbolic links resolved) are
    embedded, so a sample table cannot pull other files into the page; an image that scoring
    tolerated as unreadable gets a placeholder rather than stopping the report.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(allowed.resolve()):
        return None, f"not shown: outside {allowed}"
    try:
        data = resolved.read_bytes()
        with Image.open(stdio.BytesIO(data)) as image:
            image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        return None, f"unreadable: {error}"
    return data, ""


def _decoded(data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    with Image.open(stdio.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _fit(image: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8 of ``shape``: the image (resized if it differs), or a grey tile."""
    if image is None:
        return np.full((*shape, 3), 200, dtype=np.uint8)
    return (
        image if image.shape[:2] == tuple(shape) else np.asarray(Image.fromarray(image).resize(shape[::-1]))
    )


def grid_image(
    samples: dict[str, pd.DataFrame], roots: dict[str, Path], n_prompts: int, allowed: Path
) -> np.ndarray:
    """Columns = models, rows = the first ``n_prompts`` test prompts, first seed; a grey cell
    where an image cannot be shown (:func:`embeddable_image`), of the first shown image's size."""
    models = ["base"] + sorted(m for m in samples if m != "base")
    first = samples[models[0]]
    lines = list(first[first.seed == first.seed.min()].line_id[:n_prompts])
    images = {}
    for model in models:
        table, seed = samples[model].set_index(["line_id", "seed"]), samples[model].seed.min()
        paths = [roots[model] / table.loc[(line, seed), "image_path"] for line in lines]
        images[model] = [_decoded(embeddable_image(path, allowed)[0]) for path in paths]
    shown = [image for column in images.values() for image in column if image is not None]
    shape = shown[0].shape[:2] if shown else (32, 128)
    columns = [
        image_grid(np.stack([_fit(image, shape) for image in column]), 1) for column in images.values()
    ]
    gap = np.full((columns[0].shape[0], 4, 3), 255, dtype=np.uint8)
    return np.concatenate([c for column in columns for c in (column, gap)][:-1], axis=1)


def sample_cells(
    samples: dict[str, pd.DataFrame],
    roots: dict[str, Path],
    rewards: pd.DataFrame,
    n_prompts: int,
    allowed: Path,
) -> str:
    """HTML grid: a row per test prompt (its text as the row label), a column per model, each
    image with what OCR read in it underneath (first seed)."""
    models = ["base"] + sorted(m for m in samples if m != "base")
    first = samples[models[0]]
    seed = first.seed.min()
    rows = first[first.seed == seed].head(n_prompts)
    ocr = rewards[rewards.reward == "ocr"].set_index(["model", "line_id", "seed"])
    readings = ocr["ocr_text"] if "ocr_text" in ocr else pd.Series(dtype=object)  # no OCR scored: none
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    indexed = {model: samples[model].set_index(["line_id", "seed"]) for model in models}
    body = []
    for _, prompt_row in rows.iterrows():
        cells = []
        for model in models:
            path = roots[model] / indexed[model].loc[(prompt_row.line_id, seed), "image_path"]
            data, reason = embeddable_image(path, allowed)
            read = readings.get((model, prompt_row.line_id, seed), "")
            read = "—" if read is None or (isinstance(read, float) and np.isnan(read)) else read
            caption = (
                f"<div class='read'>read: {html.escape(str(read) or '(nothing)')}</div>" if len(ocr) else ""
            )
            if data is None:
                cells.append(f"<td><div class='missing'>{html.escape(reason)}</div>{caption}</td>")
                continue
            encoded = base64.b64encode(data).decode()
            cells.append(
                f'<td><img alt="{html.escape(model)}" src="data:image/png;base64,{encoded}">{caption}</td>'
            )
        body.append(f"<tr><th class='prompt'>{html.escape(str(prompt_row.prompt))}</th>{''.join(cells)}</tr>")
    table = f"<table class='samples'><tr><th>prompt</th>{head}</tr>{''.join(body)}</table>"
    return f"<div class='scroll'>{table}</div>"
