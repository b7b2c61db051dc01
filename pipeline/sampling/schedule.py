"""Noise schedules: the flow-matching sigmas and the Flow-SDE step's mean coefficient."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler


def flow_sigmas(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """``[num_steps + 1]`` sigmas from 1 to 0, exactly as diffusers' flow-matching Euler
    scheduler sets them for SD3 (``shift`` 3.0 is SD3's)."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(num_steps)
    return scheduler.sigmas.float()


def sde_mean_x_coefficient(sigmas: torch.Tensor, noise_level: float) -> torch.Tensor:
    """``[S]``: the coefficient ``1 - std_t^2 |dt| / (2 sigma)`` on ``x`` in the mean of a Flow-SDE
    step at noise level ``a`` on every step of ``sigmas`` ``[S + 1]`` (the first step's
    ``1 - sigma`` read at ``sigma_next``, as :func:`pipeline.sampling.sde.sde_step_with_logprob`
    does). At or below 0 the mean flips the sample's sign: the level is too large for the step."""
    sigma, sigma_next = sigmas[:-1].double(), sigmas[1:].double()
    denominator = torch.where(sigma >= 1.0, 1.0 - sigma_next, 1.0 - sigma)
    std_t_squared = noise_level**2 * sigma / denominator
    return 1 - std_t_squared * (sigma - sigma_next) / (2 * sigma)
