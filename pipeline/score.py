"""Stage ``score``: every image of a samples table scored by every reward, into Parquet.

    python -m pipeline.score --samples samples.parquet --out rewards.parquet \
        --rewards ocr,color,quality [--settings-json '{...}'] [--workers 2]

Input columns: ``image_path`` (relative paths are relative to the samples file's folder),
``prompt``, and where the rewards need them ``text`` and ``color``; any other columns (ids,
seeds, method) are carried into the output. Output: one row per image and reward with
``reward``, ``score`` and ``reason`` (set when an image could not be scored and got 0) plus
the rewards' explanation columns (recognised text, edit distance, measured colour, ...).

An image file that cannot be decoded (truncated, empty, not an image) does not stop the
stage: its rows get a missing score and the reason ``unreadable: ...``, and the count is
printed and logged (``unreadable_images``); with ``--strict`` it is an error naming the row
and file, raised before any scoring. A missing file is always an error naming its row.

Per-image rewards run in ``--workers`` processes, each with a single-threaded OCR engine,
and OCR runs once per image however many rewards use it; batched model rewards (PickScore)
run in the main process. Every input problem (missing column, missing image file, a row
without target text or with an unknown colour) fails before any scoring, naming the row or
file; the output is written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from pipeline import io, tracking
from pipeline.images import load_image
from pipeline.progress import Progress
from pipeline.rewards import REWARDS, Reward, build_rewards, check_names
from pipeline.rewards.base import target_color, target_text
from pipeline.rewards.pool import reward_pool, worker_rewards

# Images per worker task: large enough to amortise inter-process traffic, small enough to
# balance two workers on a few hundred images.
CHUNK = 8


def check_samples(samples: pd.DataFrame, names: list[str], root: Path) -> list[Path]:
    """Validate the table before any work; return the resolved image paths."""
    for column in ("image_path", "prompt"):
        if column not in samples.columns:
            raise SystemExit(f"--samples: missing column {column!r} (have {', '.join(samples.columns)})")
    paths = [p if p.is_absolute() else root / p for p in map(Path, samples["image_path"])]
    for row, path in enumerate(paths):
        if not path.is_file():
            raise SystemExit(f"--samples row {row}: image file {path} does not exist")
    metadata = _metadata(samples)
    try:
        for row, (prompt, meta) in enumerate(zip(samples["prompt"], metadata, strict=True)):
            if "ocr" in names:
                target_text(prompt, meta, row)
            if "color" in names:
                target_color(meta, row)
    except ValueError as error:
        raise SystemExit(f"--samples {error}") from None
    return paths


def _metadata(samples: pd.DataFrame) -> list[dict]:
    columns = [c for c in ("text", "color") if c in samples.columns]
    return samples[columns].to_dict("records")


def score_chunk(
    rewards: dict[str, Reward], paths: list[Path], prompts: list[str], metadata: list[dict], rows: list[int]
) -> list[dict]:
    """Score one chunk of images with every reward; one result dict per (image, reward)."""
    images = [load_image(path) for path in paths]
    out = []
    for name, reward in rewards.items():
        result = reward.score(images, prompts, metadata)
        for row, score, detail in zip(rows, result.scores, result.details, strict=True):
            out.append({"row": row, "reward": name, "score": float(score)} | detail)
    return out


def _score_chunk_in_worker(args: tuple) -> list[dict]:
    return score_chunk(worker_rewards(), *args)


def score_table(
    samples: pd.DataFrame,
    paths: list[Path],
    names: list[str],
    settings: dict,
    workers: int,
    device: str = "cpu",
) -> pd.DataFrame:
    """The long rewards table for ``samples`` (see the module docstring); model rewards
    (``Reward.on_device``) run on ``device``."""
    prompts, metadata = list(samples["prompt"]), _metadata(samples)
    per_image = [n for n in names if REWARDS[n].per_image]
    batched = [n for n in names if not REWARDS[n].per_image]
    chunks = [
        (
            paths[i : i + CHUNK],
            prompts[i : i + CHUNK],
            metadata[i : i + CHUNK],
            list(range(i, min(i + CHUNK, len(paths)))),
        )
        for i in range(0, len(paths), CHUNK)
    ]
    results: list[dict] = []
    workers = min(workers, len(chunks))
    if per_image and workers > 1:
        with (
            reward_pool(workers, per_image, settings) as pool,
            Progress("score", len(paths), "image") as progress,
        ):
            for part in pool.imap_unordered(_score_chunk_in_worker, chunks):
                results.extend(part)
                progress.advance(len({r["row"] for r in part}))
    elif per_image:
        rewards = build_rewards(per_image, settings)
        with Progress("score", len(paths), "image") as progress:
            for chunk in chunks:
                results.extend(score_chunk(rewards, *chunk))
                progress.advance(len(chunk[0]))
    if batched:
        rewards = build_rewards(batched, settings, device=device)
        results.extend(score_chunk(rewards, paths, prompts, metadata, list(range(len(paths)))))
    order = {name: i for i, name in enumerate(names)}
    results.sort(key=lambda r: (r["row"], order[r["reward"]]))
    long = pd.DataFrame(results).set_index("row")
    return samples.reset_index(drop=True).join(long, how="inner").reset_index(drop=True)


def unreadable_images(paths: list[Path]) -> dict[int, str]:
    """``{row: problem}`` for every image file that cannot be decoded (truncated, empty,
    not an image), found by decoding each one before any scoring."""
    problems = {}
    for row, path in enumerate(paths):
        try:
            load_image(path)
        except ValueError as error:
            problems[row] = str(error)
    return problems


def score_readable(
    samples: pd.DataFrame,
    paths: list[Path],
    names: list[str],
    settings: dict,
    workers: int,
    unreadable: dict[int, str],
    device: str = "cpu",
) -> pd.DataFrame:
    """:func:`score_table` of the readable rows; each unreadable row gets, per reward, a
    missing score and the reason ``unreadable: <problem>``. Rows stay in sample order."""
    samples = samples.reset_index(drop=True)
    readable = [row for row in range(len(samples)) if row not in unreadable]
    scored = score_table(
        samples.iloc[readable], [paths[row] for row in readable], names, settings, workers, device
    )
    scored.index = np.repeat(readable, len(names))
    missing = [
        samples.iloc[[row]].assign(reward=name, score=np.nan, reason=f"unreadable: {unreadable[row]}")
        for row in unreadable
        for name in names
    ]
    table = pd.concat([scored, *missing]) if missing else scored
    order = {name: i for i, name in enumerate(names)}
    table = table.assign(_order=table["reward"].map(order)).rename_axis("_row")
    return table.sort_values(["_row", "_order"], kind="stable").drop(columns="_order").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, required=True, help="samples table (Parquet)")
    parser.add_argument("--out", type=Path, required=True, help="rewards table (Parquet)")
    parser.add_argument("--rewards", required=True, help="comma-separated reward names")
    parser.add_argument("--settings-json", default="{}", help="the rewards config section (JSON)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for per-image rewards")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="an unreadable image file is an error naming its row, raised before any scoring",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device of the model rewards, e.g. PickScore (default: cuda when present, else cpu)",
    )
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    names = [n.strip() for n in args.rewards.split(",") if n.strip()]
    settings = json.loads(args.settings_json)
    try:
        check_names(names)
    except ValueError as error:
        raise SystemExit(f"--rewards: {error}") from None
    if not args.samples.is_file():
        raise SystemExit(f"--samples {args.samples}: no such file")
    samples = pd.read_parquet(args.samples)
    paths = check_samples(samples, names, args.samples.parent)
    unreadable = unreadable_images(paths)
    if unreadable and args.strict:
        row, problem = next(iter(unreadable.items()))
        raise SystemExit(f"--samples row {row}: {problem} (--strict; {len(unreadable)} unreadable in all)")
    with tracking.stage_run(args, {"rewards": names, "settings": settings}) as run:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        table = score_readable(samples, paths, names, settings, max(1, args.workers), unreadable, device)
        io.write_parquet(args.out, pa.Table.from_pandas(table, preserve_index=False))
        means = table.groupby("reward")["score"].mean()
        run.log_metrics({f"{name}_mean": float(value) for name, value in means.items()})
        run.log_metrics({"unreadable_images": len(unreadable)})
    if unreadable:
        print(
            f"{len(unreadable)} of {len(samples)} images unreadable: scores missing, reason 'unreadable: ...'"
        )
    print(f"scored {len(samples) - len(unreadable)} images x {len(names)} rewards -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
