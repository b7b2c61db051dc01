"""The GRPO training loop: sample a forest, score its leaves, compute advantages, update.

Every method of the comparison runs through this loop; they differ only in the tree
schedule (:class:`~pipeline.sampling.schedule.TreeSchedule`) and the advantage settings.
The maths lives in :mod:`pipeline.rl.advantages`, :mod:`pipeline.rl.loss` and
:mod:`pipeline.sampling`; this module orchestrates. With several processes each samples and
trains its share of the prompts, and advantages come from the gathered batch
(:mod:`pipeline.rl.distributed`); one process is the case of one rank.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from pipeline.evaluation import LeafScorer, score_images
from pipeline.models.policy import Conditioning, Policy
from pipeline.rewards import Reward
from pipeline.rl.advantages import node_values, temporal_group_advantages
from pipeline.rl.credit import edge_weights, step_credit, subsample_edges
from pipeline.rl.distributed import (
    SINGLE,
    Ranks,
    gather_forest,
    gather_objects,
    prompt_shard,
    sum_gradients,
)
from pipeline.rl.ema import Ema
from pipeline.rl.loss import gaussian_kl, kl_per_unit_time, ppo_clip_loss, weighted_mean
from pipeline.sampling.schedule import TreeSchedule, flow_sigmas
from pipeline.sampling.sde import SdeStep, sde_step_with_logprob
from pipeline.sampling.tree import TreeRollout, guided_velocity, ode_samples, sample_tree


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison: how it samples and how it turns rewards into advantages."""

    schedule: TreeSchedule
    mixing: str  # mix_then_normalize | normalize_then_mix
    std_mode: str = "group"
    renormalize: str = "none"
    aggregate: str = "mean"
    branch_noise_scale: float = 1.0  # the SDE noise level's factor on branching steps


@dataclass(frozen=True)
class LoopSettings:
    prompts_per_iteration: int
    clip_range: float
    beta: float
    max_grad_norm: float
    optimizer_steps_per_iteration: int
    microbatch: int
    guidance: float
    noise_level: float
    sde_type: str
    shift: float
    max_batch: int
    train_last_step: bool = False
    edge_fraction: float = 1.0
    edge_sampling: str = "uniform"  # uniform | weighted (pipeline.rl.credit.subsample_edges)
    seed: int = 0
    reward_weights: dict[str, float] = field(default_factory=dict)  # mix_then_normalize's, on rewards
    z_weights: dict[str, float] = field(default_factory=dict)  # normalize_then_mix's, on z-scores
    std_floor: dict[str, float] = field(default_factory=dict)  # normalize_then_mix's, reward units
    edge_weighting: str = "leaves"  # leaves | uniform (pipeline.rl.credit)
    mixed_precision: str = "no"  # no | bf16 (autocast of the denoiser's forward passes)
    kl_units: str = "flow_grpo"  # flow_grpo (KL x |dt|) | transition (the exact step KL)
    detach_uncond: bool = True  # the loss's CFG: no gradient through the unconditional branch


def denoiser_precision(policy: Policy, settings: LoopSettings) -> AbstractContextManager:
    """bf16 autocast around the rollouts (decoding included) and the loss's denoiser forward
    passes when ``mixed_precision`` is ``bf16``: matrix products and convolutions run in bf16
    while the trainable weights, their gradients and the optimizer state stay float32."""
    enabled = settings.mixed_precision == "bf16"
    return torch.autocast(policy.device.type, dtype=torch.bfloat16, enabled=enabled)


def edge_advantages(
    rollout: TreeRollout,
    leaf_rewards: torch.Tensor,
    weights: torch.Tensor,
    method: MethodSpec,
    std_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[E]``: the edge into node n gets node n's temporal-group advantage. ``leaf_rewards``
    ``[L, M]``; ``weights`` and ``std_floor`` ``[M]``."""
    values = node_values(leaf_rewards, rollout.leaf_nodes, rollout.node_parent, method.aggregate)
    node_adv = temporal_group_advantages(
        values,
        rollout.node_prompt,
        rollout.node_depth,
        weights,
        method.mixing,
        method.std_mode,
        method.renormalize,
        std_floor=std_floor,
    )
    return node_adv[rollout.edge_child]


def by_reward(values: dict[str, float], names: list[str]) -> torch.Tensor:
    """``[M]``: ``values`` in the order of ``names`` (0 for a reward it does not name)."""
    return torch.tensor([float(values.get(name, 0.0)) for name in names])


def advantage_weights(method: MethodSpec, settings: LoopSettings) -> dict[str, float]:
    """The weights a method mixes with: on z-scores (``z_weights``) when it normalises each
    reward first, else on the raw rewards (``reward_weights``, Flow-GRPO's mix)."""
    return settings.z_weights if method.mixing == "normalize_then_mix" else settings.reward_weights


def trained_edges(
    rollout: TreeRollout, advantages: torch.Tensor, num_steps: int, train_last_step: bool
) -> torch.Tensor:
    """Indices of the edges that carry gradient: stochastic, not the last step (unless asked),
    and with a non-zero advantage (zero-variance groups contribute nothing)."""
    keep = rollout.trainable & (advantages != 0)
    if not train_last_step:
        keep &= rollout.edge_step < num_steps - 1
    return torch.nonzero(keep).flatten()


def edge_transitions(
    policy: Policy,
    rollout: TreeRollout,
    index: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    settings: LoopSettings,
) -> tuple[SdeStep, int]:
    """The current policy's SDE transitions along the rollout's edges ``index`` ``[B]`` (their
    ``log_prob`` ``[B]`` of the sampled next latents, in float32 whatever the forward's
    precision) and the rows the forward cost. At the sampling weights ``exp(log_prob -
    rollout.log_prob[index])`` is the on-policy ratio, 1 up to rounding."""
    device = policy.device
    x = rollout.latents[index].to(device)
    sigma, sigma_next = rollout.sigma[index].to(device), rollout.sigma_next[index].to(device)
    rows = rollout.edge_prompt[index]
    with denoiser_precision(policy, settings):
        v, cost = guided_velocity(
            policy,
            x,
            sigma,
            cond.select(rows),
            uncond.select(rows),
            settings.guidance,
            len(index) * 2,
            detach_uncond=settings.detach_uncond,
        )
    step = sde_step_with_logprob(
        v.float(),
        x,
        sigma,
        sigma_next,
        rollout.noise_level[index].to(device),
        prev_sample=rollout.next_latents[index].to(device),
        sde_type=settings.sde_type,
    )
    return step, cost


def edge_loss(
    policy: Policy,
    rollout: TreeRollout,
    index: torch.Tensor,
    advantages: torch.Tensor,
    weights: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    settings: LoopSettings,
) -> tuple[torch.Tensor, dict, int]:
    """GRPO loss of the edges ``index`` (with gradients; their ``weights``-weighted mean), its
    statistics and the rows it cost. ``advantages`` and ``weights``: ``[E]`` of the forest."""
    device = policy.device
    step, cost = edge_transitions(policy, rollout, index, cond, uncond, settings)
    edge_weight = weights[index].to(device)
    loss, stats = ppo_clip_loss(
        step.log_prob,
        rollout.log_prob[index].to(device),
        advantages[index].to(device),
        settings.clip_range,
        weights=edge_weight,
    )
    if settings.beta > 0:
        with torch.no_grad(), policy.reference():
            reference, ref_cost = edge_transitions(policy, rollout, index, cond, uncond, settings)
        kl = gaussian_kl(step.mean, reference.mean, step.std)
        if settings.kl_units == "flow_grpo":
            kl = kl_per_unit_time(kl, rollout.sigma[index].to(device), rollout.sigma_next[index].to(device))
        kl = weighted_mean(kl, edge_weight)
        loss = loss + settings.beta * kl
        stats["kl"] = kl.item()
        cost += ref_cost
    return loss, stats, cost


def update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rollout: TreeRollout,
    advantages: torch.Tensor,
    edges: torch.Tensor,
    settings: LoopSettings,
    rng: np.random.Generator,
    ema: Ema | None = None,
    ranks: Ranks = SINGLE,
    first_edge: int = 0,
    weights: torch.Tensor | None = None,
) -> dict:
    """Optimizer steps over the trained edges (shuffled, split evenly, gradient accumulation).

    ``edges``: the global batch's trained edges (ids in the gathered forest, the same on every
    rank); this rank's own are ``first_edge .. first_edge + E - 1``, with ``rollout`` its
    ``E``-edge forest and ``advantages`` ``[E]`` their advantages. ``weights``: the gathered
    forest's edge loss weights (:mod:`pipeline.rl.credit`; None: all 1). Every step's gradient
    is that of the weighted mean loss over one chunk of the global shuffle: a rank scales its
    microbatch's weighted mean by its share of the chunk's total weight and the gradients are
    summed over ranks (:mod:`pipeline.rl.distributed`).
    """
    if weights is None:  # every edge of the gathered forest (ids up to the largest trained one)
        weights = torch.ones(max(first_edge + len(advantages), int(edges.max()) + 1))
    own_weights = weights[first_edge : first_edge + len(advantages)]
    cond, uncond = policy.encode(rollout.prompts)
    order = edges[torch.from_numpy(rng.permutation(len(edges)))].numpy()
    stats: dict[str, list[float]] = {"loss": [], "ratio_mean": [], "clip_fraction": [], "kl": []}
    norms, cost = [], 0
    parameters = policy.trainable_parameters()
    for step, chunk in enumerate(np.array_split(order, settings.optimizer_steps_per_iteration)):
        if len(chunk) == 0:
            continue
        own = chunk[(chunk >= first_edge) & (chunk < first_edge + len(advantages))] - first_edge
        chunk_weight = float(weights[torch.from_numpy(chunk)].sum())
        optimizer.zero_grad(set_to_none=True)
        for start in range(0, len(own), settings.microbatch):
            index = torch.from_numpy(own[start : start + settings.microbatch])
            loss, step_stats, rows = edge_loss(
                policy, rollout, index, advantages, own_weights, cond, uncond, settings
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()}")
            (loss * float(own_weights[index].sum()) / chunk_weight).backward()
            cost += rows
            stats["loss"].append(loss.item())
            for key in ("ratio_mean", "clip_fraction", "kl"):
                if key in step_stats:
                    stats[key].append(step_stats[key])
        sum_gradients(parameters, ranks)
        norm = float(torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm))
        if not np.isfinite(norm):  # a finite loss can still have an infinite gradient
            raise FloatingPointError(
                f"gradient norm is {norm} at optimizer step {step + 1} of "
                f"{settings.optimizer_steps_per_iteration}; the step was not applied"
            )
        norms.append(norm)
        optimizer.step()
        if ema is not None:
            ema.update()
    # Loss statistics over every rank's microbatches; the clipped norm is the same on all ranks.
    gathered = gather_objects((stats, cost), ranks)
    summary = {key: _mean([v for part, _ in gathered for v in part[key]]) for key in stats}
    return summary | {"grad_norm": _mean(norms), "nfe_training": sum(rank_cost for _, rank_cost in gathered)}


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


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


@dataclass
class EdgePlan:
    """What one iteration trains: ``advantages`` and loss ``weights`` ``[E]`` over the gathered
    forest's edges, and ``edges``, the ids of those that carry gradient this iteration."""

    advantages: torch.Tensor
    weights: torch.Tensor
    edges: torch.Tensor


def plan_edges(
    forest: TreeRollout,
    leaf_rewards: torch.Tensor,
    names: list[str],
    method: MethodSpec,
    settings: LoopSettings,
    iteration: int,
) -> EdgePlan:
    """Advantages of a scored forest (``leaf_rewards`` ``[L, M]`` in the order of ``names``),
    the edges' loss weights, and the trained edges after subsampling."""
    advantages = edge_advantages(
        forest,
        leaf_rewards,
        by_reward(advantage_weights(method, settings), names),
        method,
        by_reward(settings.std_floor, names),
    )
    weights = edge_weights(
        forest.edge_child,
        forest.edge_prompt,
        forest.leaf_nodes,
        forest.leaf_prompt,
        forest.node_parent,
        settings.edge_weighting,
    )
    edges = trained_edges(forest, advantages, method.schedule.num_steps, settings.train_last_step)
    rng = np.random.default_rng([settings.seed, iteration, 2])
    edges, weights = subsample_edges(edges, weights, settings.edge_fraction, settings.edge_sampling, rng)
    return EdgePlan(advantages, weights, edges)


def run_iteration(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rewards: dict[str, Reward] | LeafScorer,
    train: pd.DataFrame,
    method: MethodSpec,
    settings: LoopSettings,
    iteration: int,
    ema: Ema | None = None,
    ranks: Ranks = SINGLE,
) -> dict:
    """One GRPO iteration of this rank's share of the prompts; returns the whole batch's
    metrics row (the same on every rank but for the wall times: ``seconds`` and one
    ``seconds_<phase>`` per phase: rollout, decode, scoring, advantages, update)."""
    began, timer = time.perf_counter(), PhaseTimer(policy.device)
    scorer = rewards if isinstance(rewards, LeafScorer) else LeafScorer(rewards)
    scored = sample_and_score(policy, scorer, train, method, settings, iteration, timer, ranks)
    forest, scores, names = scored.forest, scored.scores, scorer.names
    leaf_rewards = torch.tensor(scores[names].to_numpy(), dtype=torch.float32)
    with timer("advantages"):
        plan = plan_edges(forest, leaf_rewards, names, method, settings, iteration)
    advantages, edges = plan.advantages, plan.edges
    with timer("update"):
        rng = np.random.default_rng([settings.seed, iteration, 1])
        first, count = scored.first_edge, len(scored.rollout.edge_child)
        stats = (
            update(
                policy,
                optimizer,
                scored.rollout,
                advantages[first : first + count],
                edges,
                settings,
                rng,
                ema,
                ranks,
                first,
                plan.weights,
            )
            if len(edges)
            else {}
        )
    group_std = scores.assign(group=forest.leaf_prompt.numpy()).groupby("group")[names].std(ddof=0)
    row = {
        "iteration": iteration,
        "prompts": len(forest.prompts),
        "leaves": len(forest.leaf_nodes),
        "nfe_sampling": forest.nfe,
        "trained_edges": len(edges),
        "edges": len(forest.edge_child),
        "seconds": time.perf_counter() - began,
        "reward_mixed": float((leaf_rewards @ by_reward(settings.reward_weights, names)).mean()),
        "zero_variance_groups": float((group_std.max(axis=1) <= 1e-6).mean()),
        "advantage_mean": advantages[edges].mean().item() if len(edges) else 0.0,
        "advantage_abs_mean": advantages[edges].abs().mean().item() if len(edges) else 0.0,
    }
    row |= step_credit(
        forest.edge_step[edges], plan.weights[edges], advantages[edges], method.schedule.num_steps
    )
    row |= {f"seconds_{phase}": seconds for phase, seconds in timer.seconds.items()}
    for name in names:
        row[f"{name}_mean"], row[f"{name}_std"] = float(scores[name].mean()), float(scores[name].std(ddof=0))
    return row | indicator_means(scorer.rewards, scores) | stats


def indicator_means(rewards: dict[str, Reward], scores: pd.DataFrame) -> dict[str, float]:
    """``<indicator>_mean`` (a rate) of every reward's indicator columns in ``scores``."""
    return {
        f"{indicator}_mean": float(scores[indicator].mean())
        for reward in rewards.values()
        for indicator in reward.indicators
    }
