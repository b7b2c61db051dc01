"""The SDE step against diffusers' scheduler, torch.distributions and hand computation."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from pipeline.sampling.sde import sde_step_with_logprob


def _scheduler(steps: int = 10) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("sde_type", ["sde", "cps"])
def test_noise_level_zero_is_the_euler_step(sde_type):
    scheduler = _scheduler()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(x.shape, generator=gen)
        expected = scheduler.step(v, t, x).prev_sample
        ours = sde_step_with_logprob(
            v, x, scheduler.sigmas[i], scheduler.sigmas[i + 1], 0.0, sde_type=sde_type
        )
        torch.testing.assert_close(ours.prev_sample, expected, rtol=0, atol=1e-6)
        x = expected


def test_log_prob_agrees_with_torch_distributions():
    scheduler = _scheduler()
    gen = torch.Generator().manual_seed(1)
    x, v = torch.randn(4, 3, 5, 5, generator=gen), torch.randn(4, 3, 5, 5, generator=gen)
    for sde_type in ("sde", "cps"):
        for i in (0, 3, 8):
            step = sde_step_with_logprob(
                v, x, scheduler.sigmas[i], scheduler.sigmas[i + 1], 0.7, generator=gen, sde_type=sde_type
            )
            reference = torch.distributions.Normal(step.mean, step.std.expand_as(step.mean))
            expected = reference.log_prob(step.prev_sample).mean(dim=(1, 2, 3))
            torch.testing.assert_close(step.log_prob, expected, rtol=1e-5, atol=1e-5)


def test_flow_sde_mean_and_std_by_hand():
    # One element: x = 0.5, v = -1, sigma = 0.8, sigma_next = 0.6, a = 0.7.
    x, v = torch.tensor([[0.5]]), torch.tensor([[-1.0]])
    step = sde_step_with_logprob(v, x, 0.8, 0.6, 0.7, noise=torch.zeros(1, 1))
    std_t = 0.7 * math.sqrt(0.8 / 0.2)
    dt = -0.2
    mean = 0.5 * (1 + std_t**2 * dt / 1.6) + (-1.0) * (1 + std_t**2 * 0.2 / 1.6) * dt
    assert step.mean.item() == pytest.approx(mean, rel=1e-6)
    assert step.std.item() == pytest.approx(std_t * math.sqrt(0.2), rel=1e-6)
    assert step.prev_sample.item() == pytest.approx(mean, rel=1e-6)


def test_first_step_at_sigma_one_uses_sigma_next_in_the_denominator():
    x, v = torch.zeros(1, 2), torch.zeros(1, 2)
    step = sde_step_with_logprob(v, x, 1.0, 0.96, 0.7, noise=torch.zeros(1, 2))
    assert torch.isfinite(step.std).all()
    assert step.std.item() == pytest.approx(0.7 * math.sqrt(1.0 / 0.04) * math.sqrt(0.04), rel=1e-6)


def test_cps_by_hand():
    x, v = torch.tensor([[0.3]]), torch.tensor([[0.4]])
    step = sde_step_with_logprob(v, x, 0.7, 0.5, 0.8, noise=torch.ones(1, 1), sde_type="cps")
    std = 0.5 * math.sin(0.8 * math.pi / 2)
    x0, x1 = 0.3 - 0.7 * 0.4, 0.3 + 0.3 * 0.4
    mean = 0.5 * x0 + math.sqrt(0.25 - std**2) * x1
    assert step.mean.item() == pytest.approx(mean, rel=1e-6)
    assert step.prev_sample.item() == pytest.approx(mean + std, rel=1e-6)


def test_cps_preserves_the_noise_coefficient():
    """With x0_hat, x1_hat the true data and noise, the mean plus independent noise has
    signal coefficient 1 - sigma_next and total noise variance sigma_next^2."""
    gen = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(20000, 1, generator=gen), torch.randn(20000, 1, generator=gen)
    sigma, sigma_next = 0.7, 0.4
    x = (1 - sigma) * x0 + sigma * eps
    v = eps - x0  # the exact flow-matching velocity
    step = sde_step_with_logprob(v, x, sigma, sigma_next, 0.8, generator=gen, sde_type="cps")
    residual = step.prev_sample - (1 - sigma_next) * x0
    assert residual.var().item() == pytest.approx(sigma_next**2, rel=0.05)


def test_prev_sample_is_evaluated_not_drawn():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    drawn = sde_step_with_logprob(v, x, 0.5, 0.4, 0.7, generator=torch.Generator().manual_seed(3))
    again = sde_step_with_logprob(v, x, 0.5, 0.4, 0.7, prev_sample=drawn.prev_sample)
    torch.testing.assert_close(again.prev_sample, drawn.prev_sample)
    torch.testing.assert_close(again.log_prob, drawn.log_prob)


def test_computes_in_float32_whatever_the_input_dtype():
    x, v = torch.randn(2, 4, dtype=torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16)
    step = sde_step_with_logprob(v, x, 0.5, 0.4, 0.7)
    assert step.prev_sample.dtype == torch.float32 and step.log_prob.dtype == torch.float32


def test_per_row_sigmas():
    x, v = torch.randn(2, 3), torch.randn(2, 3)
    both = sde_step_with_logprob(v, x, torch.tensor([0.9, 0.5]), torch.tensor([0.8, 0.3]), 0.0)
    first = sde_step_with_logprob(v[:1], x[:1], 0.9, 0.8, 0.0)
    second = sde_step_with_logprob(v[1:], x[1:], 0.5, 0.3, 0.0)
    torch.testing.assert_close(both.prev_sample, torch.cat([first.prev_sample, second.prev_sample]))
