"""Advantages against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.rl.advantages import (
    EPS,
    mix_then_normalize,
    node_values,
    normalize_then_mix,
    temporal_group_advantages,
)

W = torch.tensor([1.0, 1.0])


def test_mix_then_normalize_by_hand():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [5.0, 5.0], [1.0, 1.0]])
    groups = torch.tensor([0, 0, 0, 7, 7])
    adv = mix_then_normalize(rewards, W, groups)
    # group 0: mixed 1, 2, 0 -> mean 1, std sqrt(2/3); group 7: mixed 10, 2 -> mean 6, std 4
    s0 = math.sqrt(2 / 3)
    expected = [0.0, 1 / (s0 + EPS), -1 / (s0 + EPS), 4 / (4 + EPS), -4 / (4 + EPS)]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_global_std_uses_the_whole_batch():
    rewards = torch.tensor([[1.0], [3.0], [10.0], [14.0]])
    groups = torch.tensor([0, 0, 1, 1])
    adv = mix_then_normalize(rewards, torch.tensor([1.0]), groups, std_mode="global")
    batch_std = torch.tensor([1.0, 3.0, 10.0, 14.0]).std(unbiased=False).item()
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (batch_std + EPS)
    torch.testing.assert_close(adv, expected)


def test_singleton_and_zero_variance_groups_get_zero():
    rewards = torch.tensor([[0.3, 0.9], [0.5, 0.5], [0.5, 0.5], [0.2, 0.1]])
    groups = torch.tensor([0, 1, 1, 2])
    for adv in (mix_then_normalize(rewards, W, groups), normalize_then_mix(rewards, W, groups)):
        torch.testing.assert_close(adv, torch.zeros(4))


def test_the_two_mixing_orders_can_disagree_in_sign():
    # Reward B has the larger scale: mixing first lets it dominate item 0's sign.
    rewards = torch.tensor([[1.0, 0.5], [0.0, 3.0], [0.5, 0.0]])
    groups = torch.zeros(3, dtype=torch.long)
    mixed = mix_then_normalize(rewards, W, groups)
    grouped = normalize_then_mix(rewards, W, groups)
    # By hand: mixed r = 1.5, 3, 0.5, mean 5/3, so item 0 is below the mean.
    r = torch.tensor([1.5, 3.0, 0.5])
    assert mixed[0].item() == pytest.approx(((1.5 - 5 / 3) / (r.std(unbiased=False) + EPS)).item(), rel=1e-5)
    # Per reward: A = (1 - 0.5) / sqrt(1/6) = 1.2247; B = (0.5 - 7/6) / 1.3123 = -0.5080.
    std_b = math.sqrt(((0.5 - 7 / 6) ** 2 + (3 - 7 / 6) ** 2 + (7 / 6) ** 2) / 3)
    expected = 0.5 / (math.sqrt(1 / 6) + EPS) + (0.5 - 7 / 6) / (std_b + EPS)
    assert grouped[0].item() == pytest.approx(expected, rel=1e-5)
    assert mixed[0] < 0 < grouped[0]


def test_weights_scale_each_reward():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    groups = torch.zeros(2, dtype=torch.long)
    adv = normalize_then_mix(rewards, torch.tensor([2.0, 0.5]), groups)
    per = 0.5 / (0.5 + EPS)  # each reward alone: (+-0.5) / (0.5 + eps)
    torch.testing.assert_close(adv, torch.tensor([2 * per - 0.5 * per, -2 * per + 0.5 * per]))


def test_renormalization_modes():
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    groups = torch.tensor([0, 0, 1, 1])
    plain = normalize_then_mix(rewards, W, groups)
    in_group = normalize_then_mix(rewards, W, groups, renormalize="group")
    batch = normalize_then_mix(rewards, W, groups, renormalize="batch")
    # group 0: the two rewards cancel -> 0; group 1: +-2 (each reward +-1)
    torch.testing.assert_close(plain, torch.tensor([0.0, 0.0, 2.0, -2.0]), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(in_group, torch.tensor([0.0, 0.0, 1.0, -1.0]), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(batch, plain / (plain.std(unbiased=False) + EPS))


# A forest of one prompt: root 0 -> nodes 1, 2; node 1 -> leaves 3, 4; node 2 -> leaf 5.
PARENT = torch.tensor([-1, 0, 0, 1, 1, 2])
DEPTH = torch.tensor([0, 1, 1, 2, 2, 2])
LEAVES = torch.tensor([3, 4, 5])
LEAF_REWARDS = torch.tensor([[1.0], [3.0], [8.0]])


def test_node_values_mean_and_max_by_hand():
    mean = node_values(LEAF_REWARDS, LEAVES, PARENT, "mean")
    torch.testing.assert_close(mean[:, 0], torch.tensor([4.0, 2.0, 8.0, 1.0, 3.0, 8.0]))
    best = node_values(LEAF_REWARDS, LEAVES, PARENT, "max")
    torch.testing.assert_close(best[:, 0], torch.tensor([8.0, 3.0, 8.0, 1.0, 3.0, 8.0]))


def test_temporal_groups_by_hand():
    values = node_values(LEAF_REWARDS, LEAVES, PARENT)
    adv = temporal_group_advantages(
        values, torch.zeros(6, dtype=torch.long), DEPTH, torch.tensor([1.0]), "mix_then_normalize"
    )
    # depth 0: the root alone -> 0; depth 1: values 2, 8 -> -+3 / 3; depth 2: 1, 3, 8 (mean 4)
    std2 = math.sqrt((9 + 1 + 16) / 3)
    expected = [0.0, -3 / (3 + EPS), 3 / (3 + EPS), -3 / (std2 + EPS), -1 / (std2 + EPS), 4 / (std2 + EPS)]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_temporal_groups_separate_prompts():
    # Two prompts with the same shape of tree: groups never mix prompts.
    parent = torch.cat([PARENT, PARENT + 6 * (PARENT >= 0)])
    depth = torch.cat([DEPTH, DEPTH])
    prompt = torch.tensor([0] * 6 + [1] * 6)
    values = node_values(
        torch.cat([LEAF_REWARDS, LEAF_REWARDS + 100]), torch.cat([LEAVES, LEAVES + 6]), parent
    )
    adv = temporal_group_advantages(values, prompt, depth, torch.tensor([1.0]), "normalize_then_mix")
    torch.testing.assert_close(adv[:6], adv[6:])


def test_bad_modes_are_rejected():
    with pytest.raises(ValueError, match="std_mode"):
        mix_then_normalize(torch.ones(2, 1), torch.ones(1), torch.zeros(2), std_mode="median")
    with pytest.raises(ValueError, match="aggregate"):
        node_values(LEAF_REWARDS, LEAVES, PARENT, "softmax")


def _group_centred(rewards: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` rewards minus their group means (the regressors of a reweighted mix)."""
    out = rewards.double().clone()
    for g in groups.unique():
        at = groups == g
        out[at] -= out[at].mean(dim=0)
    return out


def _reweighting_residual(advantages: torch.Tensor, rewards: torch.Tensor, groups: torch.Tensor) -> float:
    """Relative residual of the best fit ``A ~ sum_m c_m (r_m - group mean)``: 0 when ``A`` is
    a mix-then-normalise advantage of some weights ``c`` (up to scale)."""
    x = _group_centred(rewards, groups)
    a = advantages.double()
    coef = torch.linalg.lstsq(x, a[:, None]).solution
    residual = a - (x @ coef).flatten()
    return float(residual.norm() / a.norm())


def test_global_std_grouping_is_a_reweighting_and_group_std_is_not():
    """With a batch-wide std per reward, normalise-then-mix equals mix-then-normalise with
    weights w_m / std_m, up to one scalar; with each group's own std no weights reproduce it."""
    gen = torch.Generator().manual_seed(3)
    groups = torch.arange(16).repeat_interleave(8)
    # Rewards whose within-group spread differs from group to group (as OCR's does).
    scale = torch.rand(16, 2, generator=gen).repeat_interleave(8, dim=0) * 2 + 0.05
    rewards = torch.randn(128, 2, generator=gen) * scale + torch.tensor([0.5, 3.0])
    weights = torch.tensor([1.0, 0.3])

    grouped_global = normalize_then_mix(rewards, weights, groups, std_mode="global")
    batch_std = rewards.std(dim=0, unbiased=False)
    reweighted = mix_then_normalize(rewards, weights / (batch_std + EPS), groups, std_mode="global")
    ratio = grouped_global / reweighted
    torch.testing.assert_close(ratio, torch.full_like(ratio, ratio[0].item()), rtol=1e-4, atol=1e-4)
    assert _reweighting_residual(grouped_global, rewards, groups) < 1e-5

    grouped_own = normalize_then_mix(rewards, weights, groups, std_mode="group")
    assert _reweighting_residual(grouped_own, rewards, groups) > 0.1


def test_std_floor_by_hand():
    """A near-constant reward is divided by its floor, not by its tiny std."""
    rewards = torch.tensor([[0.0, 1.0], [0.0, 3.0], [0.0, 1.0], [0.04, 3.0]])
    groups = torch.zeros(4, dtype=torch.long)
    floor = torch.tensor([0.1, 0.5])
    adv = normalize_then_mix(rewards, torch.tensor([1.0, 1.0]), groups, std_floor=floor)
    # reward 0: mean 0.01, std 0.01732 < 0.1 -> divided by 0.1; reward 1: mean 2, std 1 > 0.5.
    z0 = torch.tensor([-0.01, -0.01, -0.01, 0.03]) / (0.1 + EPS)
    z1 = torch.tensor([-1.0, 1.0, -1.0, 1.0]) / (1.0 + EPS)
    torch.testing.assert_close(adv, z0 + z1)
    unfloored = normalize_then_mix(rewards, torch.tensor([1.0, 1.0]), groups)
    assert unfloored[3] - z1[3] > 1.7  # without the floor the 0.04 bump becomes +1.73
