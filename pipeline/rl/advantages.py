"""Group-relative advantages: pure functions over flat tensors with group ids.

Shapes: ``N`` items (leaves, or tree nodes), ``M`` rewards. ``rewards`` is ``[N, M]``,
``weights`` ``[M]``, ``groups`` ``[N]`` integer group ids (any values).

* :func:`mix_then_normalize` — Flow-GRPO: ``r = sum_m w_m r_m``, then ``(r - mean) / (std + eps)``
  within each group; the std is the group's own or the whole batch's (``std_mode``).
* :func:`normalize_then_mix` — reward-based grouping (Multi-GRPO, MixGRPO, GDPO): every reward
  normalised within the group on its own, its std floored at ``std_floor[m]`` (in the
  reward's own units) so that a near-constant reward is not blown up to +-1, then
  ``A = sum_m w_m A_m``, optionally re-normalised within the group or over the batch.
  With ``std_mode="global"`` this is :func:`mix_then_normalize` with weights ``w_m / std_m``
  up to one scalar: a reweighting of the mixed reward, not a per-group normalisation.
* :func:`node_values` — a tree node's value per reward: an aggregate over its descendant leaves.
* :func:`temporal_group_advantages` — the nodes of one prompt at one depth form a group.

A group of one item, or a group whose rewards do not vary, gets advantage 0.
"""

from __future__ import annotations

import torch

EPS = 1e-4  # Flow-GRPO's std epsilon


def _group_index(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``groups`` ``[N]`` (any ids) -> dense ids ``[N]`` in ``0..G-1`` and ``G``."""
    unique, dense = torch.unique(groups, return_inverse=True)
    return dense, len(unique)


def group_mean_std(
    values: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-item group mean, population std and group size. ``values`` ``[N]`` or ``[N, M]``."""
    dense, n_groups = _group_index(groups)
    flat = values.reshape(len(values), -1).double()
    count = torch.zeros(n_groups, dtype=torch.float64).index_add_(
        0, dense, torch.ones(len(values), dtype=torch.float64)
    )
    total = torch.zeros(n_groups, flat.shape[1], dtype=torch.float64).index_add_(0, dense, flat)
    mean = total / count[:, None]
    squares = torch.zeros_like(total).index_add_(0, dense, (flat - mean[dense]) ** 2)
    std = torch.sqrt(squares / count[:, None])
    shape = values.shape
    return mean[dense].reshape(shape), std[dense].reshape(shape), count[dense]


def _normalize(
    values: torch.Tensor,
    groups: torch.Tensor,
    std_mode: str,
    eps: float,
    std_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(v - group mean) / (max(std, floor) + eps)``, 0 for singleton groups; ``values`` ``[N]``
    or ``[N, M]``, ``std_floor`` ``[M]`` (or a scalar) in the values' units, or None."""
    mean, std, count = group_mean_std(values, groups)
    if std_mode == "global":
        flat = values.reshape(len(values), -1).double()
        std = flat.std(dim=0, unbiased=False).expand_as(flat).reshape(values.shape)
    elif std_mode != "group":
        raise ValueError(f"std_mode {std_mode!r}: expected 'group' or 'global'")
    if std_floor is not None:
        std = torch.maximum(std, torch.as_tensor(std_floor, dtype=torch.float64).expand_as(std))
    advantages = (values.double() - mean) / (std + eps)
    singleton = (count == 1).reshape(-1, *([1] * (values.ndim - 1)))
    return torch.where(singleton, torch.zeros_like(advantages), advantages).float()


def mix_then_normalize(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    groups: torch.Tensor,
    std_mode: str = "group",
    eps: float = EPS,
) -> torch.Tensor:
    """Flow-GRPO's advantages ``[N]`` (module docstring)."""
    mixed = rewards.double() @ weights.double()
    return _normalize(mixed, groups, std_mode, eps)


def normalize_then_mix(
    rewards: torch.Tensor,
    weights: torch.Tensor,
    groups: torch.Tensor,
    std_mode: str = "group",
    renormalize: str = "none",
    eps: float = EPS,
    std_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reward-based grouping's advantages ``[N]`` (module docstring).

    Args:
        renormalize: ``none``; ``group`` (z-score the mixed advantage within each group again);
            ``batch`` (GDPO: divide by the batch std so the scale does not grow with M).
        std_floor: ``[M]`` the smallest std each reward is divided by, in its own units.
    """
    per_reward = _normalize(rewards, groups, std_mode, eps, std_floor)  # [N, M]
    mixed = per_reward.double() @ weights.double()
    if renormalize == "none":
        return mixed.float()
    if renormalize == "group":
        return _normalize(mixed, groups, "group", eps)
    if renormalize == "batch":
        return (mixed / (mixed.std(unbiased=False) + eps)).float()
    raise ValueError(f"renormalize {renormalize!r}: expected 'none', 'group' or 'batch'")


def node_values(
    leaf_rewards: torch.Tensor, leaf_nodes: torch.Tensor, node_parent: torch.Tensor, aggregate: str = "mean"
) -> torch.Tensor:
    """Every node's value per reward, aggregated over its descendant leaves.

    Args:
        leaf_rewards: ``[L, M]`` rewards of the leaves.
        leaf_nodes: ``[L]`` node id of each leaf.
        node_parent: ``[N]`` parent id of every node (-1 for roots).
        aggregate: ``mean`` (BranchGRPO's default) or ``max`` (the best reachable outcome).
    Returns:
        ``[N, M]``; leaves keep their own rewards.
    """
    if aggregate not in ("mean", "max"):
        raise ValueError(f"aggregate {aggregate!r}: expected 'mean' or 'max'")
    n, m = len(node_parent), leaf_rewards.shape[1]
    values = leaf_rewards.double()
    total = torch.zeros(n, m, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    best = torch.full((n, m), -torch.inf, dtype=torch.float64)
    current = leaf_nodes.clone()
    while (current >= 0).any():
        alive = current >= 0
        ids = current[alive]
        total.index_add_(0, ids, values[alive])
        count.index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
        best.scatter_reduce_(0, ids[:, None].expand(-1, m), values[alive], reduce="amax")
        current = torch.where(alive, node_parent[current.clamp(min=0)], current)
    if (count == 0).any():
        raise ValueError("some nodes have no descendant leaf")
    return (total / count[:, None] if aggregate == "mean" else best).float()


def temporal_group_advantages(
    values: torch.Tensor,
    node_prompt: torch.Tensor,
    node_depth: torch.Tensor,
    weights: torch.Tensor,
    mixing: str,
    std_mode: str = "group",
    renormalize: str = "none",
    eps: float = EPS,
    std_floor: torch.Tensor | None = None,
) -> torch.Tensor:
    """Node advantages ``[N]``: nodes of one prompt at one depth form a group.

    Args:
        values: ``[N, M]`` node values (:func:`node_values`).
        node_prompt, node_depth: ``[N]``.
        mixing: ``mix_then_normalize`` or ``normalize_then_mix``.
        std_mode: ``group``, or ``global`` (the std over every node at that depth, all prompts).
        std_floor: ``[M]`` per-reward std floor of ``normalize_then_mix`` (unused by the other).
    """
    advantages = torch.zeros(len(values))
    for depth in node_depth.unique().tolist():
        at = node_depth == depth
        groups = node_prompt[at]
        if mixing == "mix_then_normalize":
            advantages[at] = mix_then_normalize(values[at], weights, groups, std_mode, eps)
        elif mixing == "normalize_then_mix":
            advantages[at] = normalize_then_mix(
                values[at], weights, groups, std_mode, renormalize, eps, std_floor
            )
        else:
            raise ValueError(f"mixing {mixing!r}: expected 'mix_then_normalize' or 'normalize_then_mix'")
    return advantages
