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

import torch

EDGE_WEIGHTINGS = ("leaves", "uniform")


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
