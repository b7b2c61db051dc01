"""The GRPO loss for flow-matching policies: clipped importance ratio plus a KL penalty."""

from __future__ import annotations

import torch

ADVANTAGE_CLIP = 5.0  # Flow-GRPO's adv_clip_max


def ppo_clip_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float,
    advantage_clip: float = ADVANTAGE_CLIP,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """PPO-clip policy loss over ``E`` trained edges (their weighted mean), and its statistics.

    ``ratio = exp(log_prob - old_log_prob)`` on dimension-averaged log-probabilities (hence
    ratios near 1 and a tiny ``clip_range``, 1e-4 .. 1e-3 in Flow-GRPO);
    ``loss = sum_e w_e max(-A ratio, -A clamp(ratio, 1 - eps, 1 + eps)) / sum_e w_e`` with
    ``A`` clipped to ``+-advantage_clip`` and ``w`` the edges' loss weights
    (:mod:`pipeline.rl.credit`; None: all 1, the plain mean). All inputs ``[E]``.
    """
    ratio = torch.exp(log_prob - old_log_prob)
    adv = advantages.clamp(-advantage_clip, advantage_clip)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    loss = weighted_mean(torch.maximum(unclipped, clipped), weights)
    stats = {
        "ratio_mean": ratio.mean().item(),
        "clip_fraction": ((ratio - 1).abs() > clip_range).float().mean().item(),
    }
    return loss, stats


def weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum w v / sum w`` over ``[E]`` (the plain mean when ``weights`` is None)."""
    if weights is None:
        return values.mean()
    weights = weights.to(values)
    return (weights * values).sum() / weights.sum()


def gaussian_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, std^2) || N(reference_mean, std^2)) per edge, averaged over dims: ``[E]``.

    Closed form for equal variances, ``(mean - reference_mean)^2 / (2 std^2)``, with ``std``
    the transition's std (``[E, 1, ...]``): the exact KL of one step's two Gaussians.
    :func:`kl_per_unit_time` turns it into Flow-GRPO's units.
    """
    kl = (mean.float() - reference_mean.float()) ** 2 / (2 * std.float() ** 2)
    return kl.mean(dim=tuple(range(1, kl.ndim)))


KL_UNITS = ("flow_grpo", "transition")


def kl_per_unit_time(kl: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """``[E]`` transition KLs times each step's length ``|dt| = sigma - sigma_next`` (``[E]``).

    Flow-GRPO divides the squared mean difference by the SDE's ``std_t^2``, where the step's
    std is ``std_t sqrt(|dt|)``: its KL is the exact one times ``|dt|``, a KL per unit of
    time. With 10 uniform steps (``|dt| = 1/9``) the exact KL is 9 times Flow-GRPO's, and
    with SD3's shifted schedule the factor differs per step; in these units a ``beta`` means
    what it means in Flow-GRPO's configs.
    """
    return kl * (sigma - sigma_next).abs().to(kl.dtype)
