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
