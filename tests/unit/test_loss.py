"""The GRPO loss against a direct computation and torch.distributions."""

from __future__ import annotations

import torch

from pipeline.rl.loss import gaussian_kl, kl_per_unit_time, ppo_clip_loss


def test_ppo_clip_by_hand():
    eps = 0.1
    old = torch.zeros(4)
    # ratios: 1.05 (inside), 1.3 (above), 0.8 (below), 1.0
    new = torch.log(torch.tensor([1.05, 1.3, 0.8, 1.0]))
    adv = torch.tensor([1.0, 2.0, -1.0, 9.0])  # 9 is clipped to 5
    loss, stats = ppo_clip_loss(new, old, adv, eps)
    # per edge: max(-A r, -A clip(r)):
    #  1.05, A=1: -1.05 both -> -1.05
    #  1.3, A=2: max(-2.6, -2.2) = -2.2
    #  0.8, A=-1: max(0.8, 0.9) = 0.9
    #  1.0, A=5: -5
    expected = (-1.05 - 2.2 + 0.9 - 5.0) / 4
    assert abs(loss.item() - expected) < 1e-5
    assert abs(stats["clip_fraction"] - 0.5) < 1e-9
    assert abs(stats["ratio_mean"] - (1.05 + 1.3 + 0.8 + 1.0) / 4) < 1e-6


def test_ppo_gradient_vanishes_outside_the_clip_range_in_the_advantage_direction():
    new = torch.log(torch.tensor([1.5])).requires_grad_()
    loss, _ = ppo_clip_loss(new, torch.zeros(1), torch.tensor([1.0]), 0.1)
    loss.backward()
    assert new.grad.abs().item() == 0


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mean, ref = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    std = torch.tensor([0.5, 0.2, 1.0]).reshape(3, 1, 1, 1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std.expand_as(mean)),
        torch.distributions.Normal(ref, std.expand_as(ref)),
    ).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_kl(mean, ref, std), expected)


def test_kl_per_unit_time_is_flow_grpos_kl():
    """Flow-GRPO: mean((m - m_ref)^2) / (2 std_dev_t^2), with the step's std std_dev_t sqrt(|dt|)."""
    gen = torch.Generator().manual_seed(1)
    mean, ref = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    sigma, sigma_next = torch.tensor([1.0, 0.6, 0.3]), torch.tensor([0.9, 0.3, 0.0])
    std_dev_t = torch.tensor([0.7, 0.5, 0.4])
    step_std = (std_dev_t * (sigma - sigma_next).sqrt()).reshape(3, 1, 1, 1)
    flow_grpo = ((mean - ref) ** 2).mean(dim=(1, 2, 3)) / (2 * std_dev_t**2)
    exact = gaussian_kl(mean, ref, step_std)
    torch.testing.assert_close(kl_per_unit_time(exact, sigma, sigma_next), flow_grpo)
    torch.testing.assert_close(exact / flow_grpo, 1 / (sigma - sigma_next))  # 10, 3.33, 3.33
