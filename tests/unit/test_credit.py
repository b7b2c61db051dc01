"""Edge loss weights and per-step credit against hand-counted trees."""

from __future__ import annotations

import pytest
import torch

from pipeline.rl.credit import descendant_leaves, edge_weights, step_credit
from pipeline.rl.loss import ppo_clip_loss
from pipeline.sampling.tree_schedule import TreeSchedule


def _forest(schedule: TreeSchedule, prompts: int):
    """The node/edge arrays of :func:`pipeline.sampling.tree.sample_tree`, built by hand
    (no model): parents, edge children, steps and prompts."""
    node_prompt = torch.arange(prompts).repeat_interleave(schedule.roots)
    node_parent = torch.full((len(node_prompt),), -1)
    active = torch.arange(len(node_prompt))
    edge_child, edge_step, edge_prompt = [], [], []
    for step in range(schedule.num_steps):
        parents = active.repeat_interleave(schedule.factor(step))
        children = torch.arange(len(node_parent), len(node_parent) + len(parents))
        node_parent = torch.cat([node_parent, parents])
        node_prompt = torch.cat([node_prompt, node_prompt[parents]])
        edge_child.append(children)
        edge_step.append(torch.full((len(parents),), step))
        edge_prompt.append(node_prompt[parents])
        active = children
    return (
        node_parent,
        torch.cat(edge_child),
        torch.cat(edge_step),
        torch.cat(edge_prompt),
        active,
        node_prompt,
    )


def test_descendant_leaves_by_hand():
    # 0 -> 1 -> {2, 3}; 4 -> 5 (two trees); leaves 2, 3, 5
    parent = torch.tensor([-1, 0, 1, 1, -1, 4])
    counts = descendant_leaves(torch.tensor([2, 3, 5]), parent)
    assert counts.tolist() == [2, 2, 1, 1, 1, 1]


def test_tree_edges_weigh_the_leaves_below_them():
    """2 roots, 2-way at step 1 and at step 3, 5 steps: 8 leaves per prompt. Root edges (step 0)
    carry 4 leaves each (weight 1/2), step 1-2 edges 2 (1/4), step 3-4 edges 1 (1/8)."""
    schedule = TreeSchedule(num_steps=5, roots=2, branch_steps=(1, 3), branch_factors=(2, 2))
    parent, child, step, prompt, leaves, node_prompt = _forest(schedule, prompts=3)
    weights = edge_weights(child, prompt, leaves, node_prompt[leaves], parent, "leaves")
    expected = {0: 0.5, 1: 0.25, 2: 0.25, 3: 0.125, 4: 0.125}
    for s, w in expected.items():
        assert torch.allclose(weights[step == s], torch.tensor(w))
    # Each step's weights sum to the prompts (3): every step counts every trajectory once.
    for s in range(5):
        assert weights[step == s].sum().item() == pytest.approx(3.0)


def test_flat_groups_weigh_every_edge_alike():
    schedule = TreeSchedule(num_steps=4, roots=8)
    parent, child, step, prompt, leaves, node_prompt = _forest(schedule, prompts=2)
    weights = edge_weights(child, prompt, leaves, node_prompt[leaves], parent, "leaves")
    assert torch.allclose(weights, torch.tensor(1 / 8))
    uniform = edge_weights(child, prompt, leaves, node_prompt[leaves], parent, "uniform")
    assert torch.equal(uniform, torch.ones(len(child)))
    with pytest.raises(ValueError, match="edge weighting 'leaf'"):
        edge_weights(child, prompt, leaves, node_prompt[leaves], parent, "leaf")


def test_flat_loss_is_unchanged_by_leaf_weights():
    """Equal weights give the plain mean: the flat methods' loss is today's."""
    gen = torch.Generator().manual_seed(0)
    logp, old, adv = (torch.randn(16, generator=gen) * s for s in (1e-3, 1e-3, 1.0))
    plain, _ = ppo_clip_loss(logp, old, adv, 1e-3)
    weighted, _ = ppo_clip_loss(logp, old, adv, 1e-3, weights=torch.full((16,), 1 / 8))
    torch.testing.assert_close(plain, weighted)


def test_weighted_loss_by_hand():
    """Ratios of 1 (on-policy): the loss is -sum w A / sum w."""
    adv = torch.tensor([1.0, -2.0, 4.0])
    w = torch.tensor([0.5, 0.25, 0.25])
    loss, _ = ppo_clip_loss(torch.zeros(3), torch.zeros(3), adv, 1e-3, weights=w)
    assert loss.item() == pytest.approx(-(0.5 * 1 - 0.25 * 2 + 0.25 * 4) / 1.0)


def test_step_credit_moves_to_the_early_steps_with_leaf_weights():
    """Equal |A| on every edge of the tree above: uniform weights give step 0 its 2 of the 26
    edges' pull per prompt; leaf weights give each step 1/5."""
    schedule = TreeSchedule(num_steps=5, roots=2, branch_steps=(1, 3), branch_factors=(2, 2))
    parent, child, step, prompt, leaves, node_prompt = _forest(schedule, prompts=1)
    adv = torch.ones(len(child))
    for weighting, share0 in (("uniform", 2 / 26), ("leaves", 1 / 5)):
        weights = edge_weights(child, prompt, leaves, node_prompt[leaves], parent, weighting)
        credit = step_credit(step, weights, adv, 5)
        assert credit["credit_step0"] == pytest.approx(share0)
        assert credit["trained_edges_step0"] == 2 and credit["trained_edges_step4"] == 8
        assert credit["advantage_abs_step2"] == pytest.approx(1.0)
        assert sum(credit[f"credit_step{s}"] for s in range(5)) == pytest.approx(1.0)
