"""One iteration's rollouts: the prompts it draws, the forests it samples for them, their
leaves decoded and scored and gathered over ranks, and the fixed-prompt probe.

Every prompt draws its noise from its own seeded stream (:func:`prompt_seed`), so a run's
forests do not depend on how its prompts are sharded over ranks.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline.models.policy import Policy
from pipeline.rewards import Reward
from pipeline.rewards.scoring import LeafScorer, score_images
from pipeline.rl.distributed import SINGLE, Ranks, gather_forest, prompt_shard
from pipeline.rl.settings import LoopSettings, MethodSpec
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.tree import TreeRollout, ode_samples, sample_tree


def denoiser_precision(policy: Policy, settings: LoopSettings) -> AbstractContextManager:
    """bf16 autocast around the rollouts (decoding included) and the loss's denoiser forward
    passes when ``mixed_precision`` is ``bf16``: matrix products and convolutions run in bf16
    while the trainable weights, their gradients and the optimizer state stay float32."""
    enabled = settings.mixed_precision == "bf16"
    return torch.autocast(policy.device.type, dtype=torch.bfloat16, enabled=enabled)


def iteration_prompts(train: pd.DataFrame, settings: LoopSettings, iteration: int) -> pd.DataFrame:
    """The prompts of one iteration, seeded by (seed, iteration) so a resumed run repeats them."""
    rng = np.random.default_rng([settings.seed, iteration])
    return train.iloc[rng.choice(len(train), settings.prompts_per_iteration, replace=False)]


def probe_batch(train: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """The fixed probe prompts: ``count`` train rows drawn once by ``seed`` (same for every method)."""
    rng = np.random.default_rng([seed, 7])
    return train.iloc[rng.choice(len(train), min(count, len(train)), replace=False)]


def probe(
    policy: Policy, rewards: dict[str, Reward], batch: pd.DataFrame, settings: LoopSettings, steps: int
) -> dict:
    """Mean rewards of one deterministic (ODE) sample per probe prompt, with a fixed seed: the
    same starting noise every time, so a change is the policy's, not the draw's."""
    with torch.no_grad():
        rollout = ode_samples(
            policy,
            list(batch.prompt),
            steps,
            settings.guidance,
            settings.seed,
            settings.max_batch,
            settings.shift,
        )
    scores = score_images(rewards, rollout.images, list(batch.prompt), list(batch.text), list(batch.color))
    weights = np.array([settings.reward_weights.get(n, 0.0) for n in rewards])
    row = {f"{name}_mean": float(scores[name].mean()) for name in rewards}
    row["reward_mixed"] = float((scores[list(rewards)].to_numpy() @ weights).mean())
    return row | indicator_means(rewards, scores) | {"nfe_probe": rollout.nfe}


def prompt_seed(seed: int, iteration: int, index: int) -> int:
    """Noise seed of the prompt at ``index`` in the iteration's batch: the same whichever rank
    samples the prompt and whichever others it is sampled with."""
    return int(np.random.SeedSequence([seed, iteration, index]).generate_state(1)[0])


def sample_prompts(
    policy: Policy,
    prompts: list[str],
    first: int,
    method: MethodSpec,
    settings: LoopSettings,
    iteration: int,
) -> TreeRollout:
    """The forests of ``prompts`` (positions ``first, first + 1, ...`` of the iteration's batch),
    sampled together in one batched pass per denoising step.

    Each prompt draws its noise from its own stream (:func:`prompt_seed`), so a shard's
    forests are those of the same prompts sampled in one process, and the layout is that of
    the per-prompt forests concatenated in order (:func:`pipeline.sampling.tree.group_by_prompt`).
    """
    sigmas = flow_sigmas(method.schedule.num_steps, settings.shift)
    with denoiser_precision(policy, settings):
        return sample_tree(
            policy,
            prompts,
            method.schedule,
            sigmas,
            guidance=settings.guidance,
            noise_level=settings.noise_level,
            branch_noise_scale=method.branch_noise_scale,
            sde_type=settings.sde_type,
            max_batch=settings.max_batch,
            seed=[prompt_seed(settings.seed, iteration, first + i) for i in range(len(prompts))],
            decode=False,  # the leaves are decoded by the caller, timed as a phase of their own
        )


class PhaseTimer:
    """Wall seconds per named phase of an iteration (``with timer("rollout"): ...``)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}

    @contextmanager
    def __call__(self, phase: str):
        began = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels queued in the phase belong to it
        self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - began


def leaf_images(policy: Policy, rollout: TreeRollout, settings: LoopSettings) -> np.ndarray:
    """uint8 ``[L, H, W, 3]``: the forest's leaves decoded in ``max_batch`` chunks, in leaf order."""
    x = rollout.next_latents[rollout.leaf_edges()].to(policy.device)
    chunk = settings.max_batch
    with torch.no_grad(), denoiser_precision(policy, settings):
        return np.concatenate([policy.decode(x[i : i + chunk]) for i in range(0, len(x), chunk)])


@dataclass
class ScoredForest:
    """One iteration's sampled and scored batch as every rank sees it after gathering.

    ``rollout``: this rank's forest; ``forest``: the gathered batch's (every rank's, in prompt
    order); ``scores``: ``[L]`` rows of the gathered leaves' rewards; ``first_edge``: this
    rank's first edge in ``forest``; ``images``: this rank's leaves, uint8 ``[L_r, H, W, 3]``."""

    rollout: TreeRollout
    forest: TreeRollout
    scores: pd.DataFrame
    first_edge: int
    images: np.ndarray


def sample_and_score(
    policy: Policy,
    scorer: LeafScorer,
    train: pd.DataFrame,
    method: MethodSpec,
    settings: LoopSettings,
    iteration: int,
    timer: PhaseTimer,
    ranks: Ranks = SINGLE,
) -> ScoredForest:
    """The rollout, decode and scoring phases of one iteration, gathered over ranks."""
    batch = iteration_prompts(train, settings, iteration)
    shard = prompt_shard(len(batch), ranks)
    own = batch.iloc[shard]
    with timer("rollout"):
        rollout = sample_prompts(policy, list(own.prompt), shard.start, method, settings, iteration)
    with timer("decode"):
        images = leaf_images(policy, rollout, settings)
    with timer("scoring"):
        leaf = rollout.leaf_prompt.numpy()
        scores = scorer(images, *(list(own[column].iloc[leaf]) for column in ("prompt", "text", "color")))
    with timer("advantages"):
        # Group statistics span ranks: every rank computes all advantages on the gathered batch.
        forest, scores, first_edge = gather_forest(rollout, scores, ranks)
    return ScoredForest(rollout, forest, scores, first_edge, images)


def indicator_means(rewards: dict[str, Reward], scores: pd.DataFrame) -> dict[str, float]:
    """``<indicator>_mean`` (a rate) of every reward's indicator columns in ``scores``."""
    return {
        f"{indicator}_mean": float(scores[indicator].mean())
        for reward in rewards.values()
        for indicator in reward.indicators
    }

