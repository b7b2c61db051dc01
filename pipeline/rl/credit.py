"""How much each trained edge of a forest counts in the loss, and where the credit lands.

A flat group of ``G`` trajectories has ``G`` edges at every step. A tree with shared prefixes
has fewer edges at its early steps (2, 4, 4, 8, ... for 2 roots branching 2-way twice), so a
loss that averages edges, each counted once, gives the early steps less weight than a flat
group does — the opposite of what temporal groups are for. Weighting the edge into node ``n``
by the leaves below ``n`` (over the prompt's leaves) gives the per-trajectory objective: every
root-to-leaf trajectory counts each of its steps once, shared prefixes included, while the
shared prefix is still computed (and counted in NFE) once. For a flat group every edge has
one leaf below it, so the weighting changes nothing there.
"""

from __future__ import annotations

import numpy as np
import torch

EDGE_WEIGHTINGS = ("leaves", "uniform")
EDGE_SAMPLINGS = ("uniform", "weighted")


def descendant_leaves(leaf_nodes: torch.Tensor, node_parent: torch.Tensor) -> torch.Tensor:
    """``[N]`` leaves at or below every node; ``leaf_nodes`` ``[L]``, ``node_parent`` ``[N]`` (-1: root)."""
    counts = torch.zeros(len(node_parent), dtype=torch.long)
    current = leaf_nodes.clone()
    while (current >= 0).any():
        alive = current[current >= 0]
        counts.index_add_(0, alive, torch.ones_like(alive))
        current = torch.where(current >= 0, node_parent[current.clamp(min=0)], current)
    return counts


def edge_weights(
    edge_child: torch.Tensor,
    edge_prompt: torch.Tensor,
    leaf_nodes: torch.Tensor,
    leaf_prompt: torch.Tensor,
    node_parent: torch.Tensor,
    weighting: str = "leaves",
) -> torch.Tensor:
    """``[E]`` loss weight of every edge (float32).

    ``leaves``: the leaves below the edge's child node divided by its prompt's leaves (an edge
    into a leaf of a flat group of 8 weighs 1/8; a root edge over 4 of 8 leaves weighs 1/2).
    ``uniform``: every edge weighs 1 (each edge counted once).
    """
    if weighting == "uniform":
        return torch.ones(len(edge_child))
    if weighting != "leaves":
        raise ValueError(f"edge weighting {weighting!r}: expected one of {EDGE_WEIGHTINGS}")
    below = descendant_leaves(leaf_nodes, node_parent)[edge_child].double()
    per_prompt = torch.bincount(leaf_prompt)  # [P] leaves of every prompt
    return (below / per_prompt[edge_prompt].double()).float()


def step_credit(
    edge_step: torch.Tensor, weights: torch.Tensor, advantages: torch.Tensor, num_steps: int
) -> dict[str, float]:
    """Per denoising step ``k`` of the trained edges (all inputs ``[E]``): ``trained_edges_step<k>``
    (count), ``advantage_abs_step<k>`` (mean |A|, 0 without edges) and ``credit_step<k>`` (the
    step's share of ``sum w |A|``: how much of the loss's pull lands on that step)."""
    pull = weights.double() * advantages.double().abs()
    total = float(pull.sum())
    stats = {}
    for step in range(num_steps):
        at = edge_step == step
        count = int(at.sum())
        stats[f"trained_edges_step{step}"] = count
        stats[f"advantage_abs_step{step}"] = float(advantages[at].abs().mean()) if count else 0.0
        stats[f"credit_step{step}"] = float(pull[at].sum()) / total if total > 0 else 0.0
    return stats


def inclusion_probabilities(weights: torch.Tensor, count: int) -> torch.Tensor:
    """``[E]`` float64 probabilities proportional to ``weights`` ``[E]`` (> 0) that sum to
    ``count`` (<= E) and stay <= 1: an edge whose share would exceed 1 is always included and
    the rest share the remaining count in proportion to their weights."""
    w = weights.double()
    certain = torch.zeros(len(w), dtype=torch.bool)
    while True:
        rest = count - int(certain.sum())
        pi = torch.where(certain, torch.ones_like(w), rest * w / w[~certain].sum())
        newly = (pi >= 1) & ~certain
        if not newly.any():
            return pi.clamp(max=1.0)
        certain |= newly


def subsample_edges(
    edges: torch.Tensor, weights: torch.Tensor, fraction: float, sampling: str, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A share ``fraction`` of the trained ``edges`` ``[E_t]`` (ids into ``weights`` ``[E]``), in
    ascending order, and the loss weights ``[E]`` that keep the loss an estimate of the full one.

    ``uniform``: ``round(fraction E_t)`` edges (at least one) drawn without replacement, each
    with its own weight (the loss is their weighted mean). ``weighted``: systematic sampling with
    inclusion probability ``pi_e`` proportional to the edge's weight (:func:`inclusion_probabilities`),
    and each drawn edge weighs ``w_e / pi_e`` (Horvitz-Thompson): a tree's root edges, which
    carry many leaves, are drawn more often instead of counting more when drawn. With
    ``fraction`` 1 every edge is kept with its weight.
    """
    if sampling not in EDGE_SAMPLINGS:
        raise ValueError(f"edge sampling {sampling!r}: expected one of {EDGE_SAMPLINGS}")
    if fraction >= 1.0 or len(edges) == 0:
        return edges, weights
    count = max(1, round(fraction * len(edges)))
    if sampling == "uniform":
        chosen = np.sort(rng.choice(len(edges), count, replace=False))
        return edges[torch.from_numpy(chosen)], weights
    pi = inclusion_probabilities(weights[edges], count)
    order = torch.from_numpy(rng.permutation(len(edges)))  # a random order: no periodic pattern
    cumulative = torch.cumsum(pi[order], dim=0)
    start = float(rng.uniform())
    # Edge k of the order is drawn when a point start, start + 1, ... falls in its interval.
    hits = torch.floor(cumulative - start) - torch.floor(cumulative - pi[order] - start)
    drawn = torch.sort(order[hits > 0]).values
    adjusted = weights.clone()
    adjusted[edges[drawn]] = (weights[edges[drawn]].double() / pi[drawn]).float()
    return edges[drawn], adjusted
