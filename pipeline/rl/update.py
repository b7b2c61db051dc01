"""One iteration's update: the advantages of a scored forest, the edges it trains, and the
clipped policy-gradient steps over them.

The maths lives in :mod:`pipeline.rl.advantages`, :mod:`pipeline.rl.credit`,
:mod:`pipeline.rl.loss` and :mod:`pipeline.sampling.sde`; this module applies it to a forest.
With several ranks, each computes every advantage on the gathered forest and the loss of its
own edges, and gradients are summed (:mod:`pipeline.rl.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.ema import Ema
from pipeline.models.policy import Conditioning, Policy
from pipeline.rl.advantages import node_values, temporal_group_advantages
from pipeline.rl.credit import edge_weights, subsample_edges
from pipeline.rl.distributed import SINGLE, Ranks, gather_objects, sum_gradients
from pipeline.rl.loss import gaussian_kl, kl_per_unit_time, ppo_clip_loss, weighted_mean
from pipeline.rl.rollouts import denoiser_precision
from pipeline.rl.settings import LoopSettings, MethodSpec
from pipeline.sampling.sde import SdeStep, sde_step_with_logprob
from pipeline.sampling.tree import TreeRollout, guided_velocity


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

