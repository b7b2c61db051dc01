"""Stage ``score``: every image of a samples table scored by every reward, into Parquet.

    python -m pipeline.stages.score --samples samples.parquet --out rewards.parquet \
        --rewards ocr,color,quality [--settings-json '{...}'] [--workers 2]

Input columns: ``image_path`` (relative paths are relative to the samples file's folder),
``prompt``, and where the rewards need them ``text`` and ``color``; any other columns (ids,
seeds, method) are carried into the output. Output: one row per image and reward with
``reward``, ``score`` and ``reason`` (set when an image could not be scored and got 0) plus
the rewards' explanation columns (recognised text, edit distance, measured colour, ...).

An image file that cannot be decoded (truncated, empty, not an image) does not stop the
stage: its rows get a missing score and the reason ``unreadable: ...``, and the count is
printed and logged (``unreadable_images``); with ``--strict`` it is an error naming the row
and file, raised before any scoring. A missing file is always an error naming its row. A
reward that returns NaN or an infinite score for an image gets a missing score too, with the
reason ``non-finite score: <reward> returned <value> for <image>``, counted and logged
(``non_finite_scores``); with ``--strict`` the stage fails naming the image, writing nothing.

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

import pandas as pd
import pyarrow as pa
import torch

from pipeline.rewards import check_names
from pipeline.rewards.scoring import (
    NON_FINITE,
    check_samples,
    score_readable,
    unreadable_images,
)
from pipeline.runtime import io, tracking


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
        reasons = table["reason"] if "reason" in table else pd.Series("", index=table.index)
        non_finite = reasons.fillna("").astype(str).str.startswith(NON_FINITE)
        if non_finite.any() and args.strict:
            first = table[non_finite].iloc[0]
            raise SystemExit(
                f"--samples {first['image_path']}: {first['reason']} (--strict; {int(non_finite.sum())} "
                "non-finite scores in all); nothing was written"
            )
        io.write_parquet(args.out, pa.Table.from_pandas(table, preserve_index=False))
        means = table.groupby("reward")["score"].mean()
        run.log_metrics({f"{name}_mean": float(value) for name, value in means.items()})
        run.log_metrics({"unreadable_images": len(unreadable), "non_finite_scores": int(non_finite.sum())})
    if unreadable:
        print(
            f"{len(unreadable)} of {len(samples)} images unreadable: scores missing, reason 'unreadable: ...'"
        )
    if non_finite.any():
        counts = table[non_finite].groupby("reward").size()
        print(
            f"{int(non_finite.sum())} non-finite scores recorded as missing (reason '{NON_FINITE}: ...'): "
            + ", ".join(f"{name} {count}" for name, count in counts.items())
        )
    print(f"scored {len(samples) - len(unreadable)} images x {len(names)} rewards -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
