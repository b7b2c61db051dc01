"""Scoring helpers shared by the model card and the training stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.images import load_image
from pipeline.rewards import REWARDS, Reward, build_rewards
from pipeline.rewards.base import target_color, target_text
from pipeline.rewards.pool import reward_pool, worker_rewards
from pipeline.runtime.progress import Progress


def score_images(
    rewards: dict[str, Reward], images: np.ndarray, prompts: list[str], texts: list[str], colors: list[str]
) -> pd.DataFrame:
    """One row per image: a column per reward, each followed by its indicator columns
    (``Reward.indicators``: ``ocr_exact``, ``color_correct``) as booleans."""
    metadata = [{"text": t, "color": c} for t, c in zip(texts, colors, strict=True)]
    table = {}
    for name, reward in rewards.items():
        out = reward.score(list(images), prompts, metadata)
        table[name] = out.scores
        for indicator in reward.indicators:
            table[indicator] = np.array([bool(detail[indicator]) for detail in out.details])
    return pd.DataFrame(table)


class LeafScorer:
    """Scores images with every reward of ``rewards`` (:func:`score_images`).

    With ``workers`` > 1, the per-image rewards (OCR, colour, quality) run in a pool of that
    many processes (:func:`pipeline.rewards.pool.reward_pool`), each scoring an equal
    contiguous share of the images with rewards it built once; batched model rewards
    (PickScore) stay in this process. The scores are those of one process, in image order.
    ``names`` lists the rewards in column order. :meth:`close` ends the pool.
    """

    def __init__(self, rewards: dict[str, Reward], workers: int = 0, settings: dict | None = None):
        self.rewards, self.names = rewards, list(rewards)
        self.pooled = [n for n in self.names if rewards[n].per_image] if workers > 1 else []
        self.local = {n: r for n, r in rewards.items() if n not in self.pooled}
        self.pool = reward_pool(workers, self.pooled, settings or {}) if self.pooled else None
        self.workers = workers

    def __call__(
        self, images: np.ndarray, prompts: list[str], texts: list[str], colors: list[str]
    ) -> pd.DataFrame:
        parts = [score_images(self.local, images, prompts, texts, colors)] if self.local else []
        if self.pool is not None:
            bounds = np.linspace(0, len(images), self.workers + 1).round().astype(int)
            shares = [
                (images[a:b], prompts[a:b], texts[a:b], colors[a:b])
                for a, b in zip(bounds[:-1], bounds[1:], strict=True)
                if b > a
            ]
            parts.append(pd.concat(self.pool.starmap(_score_in_worker, shares), ignore_index=True))
        table = pd.concat(parts, axis=1)
        check_finite(table, self.names, prompts)
        return table[[c for n in self.names for c in (n, *self.rewards[n].indicators)]]

    def close(self, abort: bool = False) -> None:
        """End the pool: let its workers finish, or with ``abort`` (an exception, Ctrl-C) stop
        them at once; waiting for tasks a dead worker left unanswered would never end."""
        if self.pool is not None:
            if abort:
                self.pool.terminate()
            else:
                self.pool.close()
            self.pool.join()
            self.pool = None


def _score_in_worker(
    images: np.ndarray, prompts: list[str], texts: list[str], colors: list[str]
) -> pd.DataFrame:
    return score_images(worker_rewards(), images, prompts, texts, colors)


def check_finite(table: pd.DataFrame, names: list[str], prompts: list[str]) -> None:
    """Raise :class:`FloatingPointError` naming the reward, the count and the first image's
    prompt and value when a reward column of ``table`` (one row per rollout) is not finite: an
    advantage computed from it would make the loss NaN without saying why."""
    for name in names:
        scores = table[name].to_numpy(dtype=float)
        bad = np.flatnonzero(~np.isfinite(scores))
        if len(bad):
            first = bad[0]
            raise FloatingPointError(
                f"reward {name!r} returned {scores[first]} for {len(bad)} of {len(scores)} rollouts "
                f"(first: image {first}, prompt {prompts[first]!r})"
            )


def group_spread(scores: pd.DataFrame, groups: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per reward: mean within-group std and the share of groups with non-zero spread."""
    stats = {}
    grouped = scores.assign(group=groups).groupby("group")
    for name in names:
        std = grouped[name].std(ddof=0)
        stats[f"{name}_group_std"] = float(std.mean())
        stats[f"{name}_groups_with_spread"] = float((std > 1e-6).mean())
    return stats


def summarise(scores: pd.DataFrame) -> dict[str, float]:
    """Mean of every reward column, with exact match and colour accuracy as rates."""
    return {column: round(float(scores[column].mean()), 4) for column in scores.columns}


# The start of the reason of a score a reward returned as NaN or infinite (recorded missing).
NON_FINITE = "non-finite score"

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
        for row, path, score, detail in zip(rows, paths, result.scores, result.details, strict=True):
            record = {"row": row, "reward": name, "score": float(score)} | detail
            if not np.isfinite(record["score"]):
                # Missing, never averaged: a mean skips it, and the reason says why.
                record |= {
                    "score": np.nan,
                    "reason": f"{NON_FINITE}: {name} returned {float(score)} for {path}",
                }
            out.append(record)
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
