"""Scoring helpers shared by the model card and the training stage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.rewards import Reward
from pipeline.rewards.pool import reward_pool, worker_rewards


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
        return table[[c for n in self.names for c in (n, *self.rewards[n].indicators)]]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None


def _score_in_worker(
    images: np.ndarray, prompts: list[str], texts: list[str], colors: list[str]
) -> pd.DataFrame:
    return score_images(worker_rewards(), images, prompts, texts, colors)


def group_spread(scores: pd.DataFrame, groups: np.ndarray, names: list[str]) -> dict[str, float]:
    """Per reward: mean within-group std and the share of groups with non-zero spread."""
    stats = {}
    grouped = scores.assign(group=groups).groupby("group")
    for name in names:
        std = grouped[name].std(ddof=0)
        stats[f"{name}_group_std"] = float(std.mean())
        stats[f"{name}_groups_with_spread"] = float((std > 1e-6).mean())
    return stats
