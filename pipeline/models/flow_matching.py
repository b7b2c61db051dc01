"""Rectified-flow (flow-matching) training maths, as SD3 trains: pure functions.

``x_sigma = (1 - sigma) x0 + sigma eps`` and the model regresses the velocity
``v = eps - x0`` (so that ``dx/dsigma = v`` and the sampler integrates sigma from 1 to 0).
"""

from __future__ import annotations

import torch


def logit_normal_sigmas(
    n: int, mean: float, std: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[n]`` noise levels ``sigmoid(N(mean, std^2))``: SD3's logit-normal sampling, which
    puts more training on middle noise levels than a uniform draw."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def mixed_sigmas(
    n: int, mean: float, std: float, uniform_share: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[n]`` noise levels: logit-normal, with a share ``uniform_share`` drawn uniformly in
    (0, 1) instead. Logit-normal alone rarely trains sigma below 0.1, where a small pixel-space
    model must learn to remove the last fine noise; the uniform share keeps every level seen."""
    sigmas = logit_normal_sigmas(n, mean, std, generator)
    uniform = torch.rand(n, generator=generator)
    return torch.where(torch.rand(n, generator=generator) < uniform_share, uniform, sigmas)


def noisy_sample(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) x0 + sigma noise``; ``x0``, ``noise`` ``[B, ...]``, ``sigma`` ``[B]``."""
    s = sigma.reshape(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``noise - x0``."""
    return noise - x0


def flow_matching_loss(predicted: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted velocity (scalar)."""
    return torch.mean((predicted.float() - velocity_target(x0, noise).float()) ** 2)


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """Linear warm-up from ``base_lr / warmup_steps`` to ``base_lr``, then constant."""
    return base_lr * min(1.0, (step + 1) / max(1, warmup_steps))
