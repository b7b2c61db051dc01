"""One stochastic (or deterministic) flow-matching step, with the transition's log-probability.

Notation (diffusers' ``FlowMatchEulerDiscreteScheduler``): sigmas run from 1 (noise) to 0
(data), ``x_sigma = (1 - sigma) x0 + sigma eps``; ``v`` is the model's velocity (after
classifier-free guidance); ``dt = sigma_next - sigma < 0``.

``sde_type="sde"`` (Flow-SDE, Flow-GRPO's default) is Euler-Maruyama of
``dx = [v + std_t^2 / (2 sigma) (x + (1 - sigma) v)] dt + std_t dw`` with
``std_t = a sqrt(sigma / (1 - sigma))`` (``a`` = ``noise_level``), which has the same
marginals as the ODE ``dx = v dt``:

    mean = x (1 + std_t^2 dt / (2 sigma)) + v (1 + std_t^2 (1 - sigma) / (2 sigma)) dt
    x'   = mean + std_t sqrt(-dt) eps

``sde_type="cps"`` (coefficient-preserving sampling) re-noises the predicted clean sample so
that the noise coefficient stays exactly ``sigma_next``:

    x0_hat = x - sigma v,  x1_hat = x + (1 - sigma) v,  std = sigma_next sin(a pi / 2)
    mean   = (1 - sigma_next) x0_hat + sqrt(sigma_next^2 - std^2) x1_hat,  x' = mean + std eps

The log-probability is the exact Gaussian log-density of ``x'`` under ``N(mean, std^2)``,
averaged over every non-batch dimension (Flow-GRPO averages too, which keeps the PPO ratio
near 1 and the clip range tiny). For CPS we keep the full Gaussian density where Flow-GRPO
keeps only ``-(x' - mean)^2``; the PPO ratio is then the true likelihood ratio.
With ``noise_level = 0`` both types are the plain Euler step ``x + v dt``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SDE_TYPES = ("sde", "cps")


@dataclass
class SdeStep:
    """Result of one step; tensors are float32.

    Attributes:
        prev_sample: ``[B, ...]`` the next (less noisy) sample.
        log_prob: ``[B]`` mean over non-batch dims of the Gaussian log-density of
            ``prev_sample`` (zeros for a deterministic step).
        mean: ``[B, ...]`` the transition's mean.
        std: ``[B, 1, ..., 1]`` the transition's standard deviation (per element).
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _per_row(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar or ``[B]`` value as float32 ``[B, 1, ..., 1]`` broadcastable against ``like``."""
    value = torch.as_tensor(value, dtype=torch.float32, device=like.device)
    if value.ndim == 0:
        value = value.expand(like.shape[0])
    return value.reshape(-1, *([1] * (like.ndim - 1)))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Log N(x; mean, std^2) per element, averaged over non-batch dims. Shapes ``[B, ...]`` -> ``[B]``."""
    log_density = -((x - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_density.mean(dim=tuple(range(1, x.ndim)))


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sample: torch.Tensor,
    sigma: float | torch.Tensor,
    sigma_next: float | torch.Tensor,
    noise_level: float | torch.Tensor,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    sde_type: str = "sde",
    noise: torch.Tensor | None = None,
) -> SdeStep:
    """One step from ``sigma`` to ``sigma_next`` (module docstring for the maths).

    Args:
        velocity: ``[B, ...]`` model velocity at ``sample`` (any dtype; computed in float32).
        sample: ``[B, ...]`` current sample ``x_sigma``.
        sigma, sigma_next: scalars or ``[B]``; ``1 >= sigma > sigma_next >= 0``.
        noise_level: ``a`` above, a scalar or ``[B]`` (a tree's branch steps may be noisier);
            0 gives the deterministic Euler step. Rows are all deterministic or all not.
        prev_sample: if given, its log-probability is evaluated instead of drawing a sample
            (PPO re-evaluation of a stored transition).
        generator: torch generator for the noise draw.
        sde_type: ``"sde"`` (Flow-SDE) or ``"cps"``.
        noise: ``[B, ...]`` standard normal noise to use instead of drawing it (tree
            branching draws one per child).
    """
    if sde_type not in SDE_TYPES:
        raise ValueError(f"sde_type {sde_type!r}: expected one of {SDE_TYPES}")
    v, x = velocity.float(), sample.float()
    s, s_next = _per_row(sigma, x), _per_row(sigma_next, x)
    dt = s_next - s
    a = _per_row(noise_level, x)
    deterministic = a == 0
    if deterministic.any() and not deterministic.all():
        raise ValueError("noise_level: some rows are 0 and some are not (a step is ODE or SDE as a whole)")
    if sde_type == "sde":
        # At sigma = 1 the std's denominator 1 - sigma vanishes; the first step uses
        # 1 - sigma_next instead (Flow-GRPO uses sigmas[1], the same value on that step).
        denominator = torch.where(s >= 1.0, 1.0 - s_next, 1.0 - s)
        std_t = a * torch.sqrt(s / denominator)
        mean = x * (1 + std_t**2 * dt / (2 * s)) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        std = std_t * torch.sqrt(-dt)
    else:
        std = s_next * torch.sin(a * math.pi / 2)
        x0_hat, x1_hat = x - s * v, x + (1 - s) * v
        mean = (1 - s_next) * x0_hat + torch.sqrt(torch.clamp(s_next**2 - std**2, min=0.0)) * x1_hat
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        prev_sample = mean + std * noise.float()
    else:
        prev_sample = prev_sample.float()
    if deterministic.all():
        log_prob = torch.zeros(x.shape[0], device=x.device)
    else:
        log_prob = gaussian_log_prob(prev_sample, mean, std)
    return SdeStep(prev_sample, log_prob, mean, std)
