"""Tree schedule counts, edge bookkeeping and determinism of the tree sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.policy import Conditioning
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.tree import sample_tree
from pipeline.sampling.tree_schedule import TreeSchedule


class LinearPolicy:
    """A cheap stand-in policy: velocity = w * x + prompt bias, so runs take milliseconds."""

    latent_shape = (2, 4, 4)
    device = torch.device("cpu")

    def __init__(self):
        self.calls = 0

    def encode(self, prompts):
        bias = torch.tensor([[float(len(p))] for p in prompts])
        return Conditioning({"bias": bias}), Conditioning({"bias": torch.zeros_like(bias)})

    def velocity(self, latents, sigma, cond):
        self.calls += 1
        return -0.5 * latents + cond.tensors["bias"].reshape(-1, 1, 1, 1) * 0.01

    def decode(self, latents):
        return ((latents.clamp(-1, 1) + 1) * 127.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


SCHEDULES = [
    TreeSchedule(num_steps=6, roots=8),  # plain GRPO group
    TreeSchedule(num_steps=6, roots=2, branch_steps=(0, 2), branch_factors=(2, 3)),
    TreeSchedule(num_steps=6, roots=1, branch_steps=(1, 3, 4), branch_factors=(2, 2, 2), between="ode"),
    TreeSchedule(num_steps=6, roots=2, branch_steps=(1,), branch_factors=(4,), sde_steps=3),  # SDE window
]


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_node_counts_and_edges(schedule):
    prompts = ['a "AB"', 'a "CDE"', 'a "F"']
    rollout = sample_tree(
        LinearPolicy(), prompts, schedule, flow_sigmas(schedule.num_steps), max_batch=7, seed=0
    )
    per_depth = schedule.nodes_per_depth()
    n_nodes = len(prompts) * sum(per_depth)
    assert len(rollout.node_prompt) == n_nodes
    assert len(rollout.edge_child) == n_nodes - len(prompts) * schedule.roots
    assert len(rollout.leaf_nodes) == len(prompts) * schedule.leaves_per_prompt == rollout.images.shape[0]
    for depth, count in enumerate(per_depth):
        assert int((rollout.node_depth == depth).sum()) == len(prompts) * count
    # Every edge's parent exists and is one step shallower, in the same prompt.
    parent, child = rollout.edge_parent, rollout.edge_child
    assert (rollout.node_parent[child] == parent).all()
    assert (rollout.node_depth[child] == rollout.node_depth[parent] + 1).all()
    assert (rollout.node_prompt[child] == rollout.node_prompt[parent]).all()
    assert (rollout.edge_step == rollout.node_depth[parent]).all()
    # Every leaf reaches a root of its own prompt in num_steps hops.
    for leaf in rollout.leaf_nodes.tolist():
        node, hops = leaf, 0
        while rollout.node_parent[node] >= 0:
            node, hops = int(rollout.node_parent[node]), hops + 1
        assert hops == schedule.num_steps and rollout.node_depth[node] == 0
        assert rollout.node_prompt[node] == rollout.node_prompt[leaf]
    # Edges into a node carry that node's latents; the next edge starts from them.
    by_child = {int(c): i for i, c in enumerate(child)}
    for i, p in enumerate(parent.tolist()):
        if p in by_child:
            torch.testing.assert_close(rollout.latents[i], rollout.next_latents[by_child[p]])
    # Trainable steps are exactly the stochastic ones and have a log-probability.
    stochastic = torch.tensor([schedule.is_stochastic(int(s)) for s in rollout.edge_step])
    assert (rollout.trainable == stochastic).all()
    assert (rollout.log_prob[~rollout.trainable] == 0).all() and (
        rollout.log_prob[rollout.trainable] != 0
    ).all()


def test_siblings_share_the_parent_and_differ():
    schedule = TreeSchedule(num_steps=4, roots=1, branch_steps=(1,), branch_factors=(3,))
    rollout = sample_tree(LinearPolicy(), ['a "X"'], schedule, flow_sigmas(4), seed=1)
    at_branch = rollout.edge_step == 1
    assert torch.equal(rollout.latents[at_branch][0], rollout.latents[at_branch][1])
    assert not torch.equal(rollout.next_latents[at_branch][0], rollout.next_latents[at_branch][1])


def test_same_seed_same_tree_and_chunking_does_not_matter():
    schedule = SCHEDULES[1]
    runs = [
        sample_tree(LinearPolicy(), ['a "AB"', 'b "C"'], schedule, flow_sigmas(6), seed=s, max_batch=m)
        for s, m in ((3, 64), (3, 5), (4, 64))
    ]
    np.testing.assert_array_equal(runs[0].images, runs[1].images)
    torch.testing.assert_close(runs[0].log_prob, runs[1].log_prob)
    assert not torch.equal(runs[0].next_latents, runs[2].next_latents)


def test_nfe_counts_rows_and_guidance():
    schedule = SCHEDULES[1]
    policy = LinearPolicy()
    plain = sample_tree(policy, ['a "AB"'] * 2, schedule, flow_sigmas(6), guidance=1.0)
    guided = sample_tree(policy, ['a "AB"'] * 2, schedule, flow_sigmas(6), guidance=4.0)
    assert plain.nfe == 2 * schedule.nfe_per_prompt() == 2 * sum(schedule.nodes_per_depth()[:-1])
    assert guided.nfe == 2 * plain.nfe


def test_guidance_combines_branches():
    policy = LinearPolicy()
    schedule = TreeSchedule(num_steps=1, roots=1, between="ode")
    one = sample_tree(policy, ['a "ABCD"'], schedule, flow_sigmas(1), guidance=1.0, seed=0, decode=False)
    three = sample_tree(policy, ['a "ABCD"'], schedule, flow_sigmas(1), guidance=3.0, seed=0, decode=False)
    x = one.latents[0]
    bias = len('a "ABCD"') * 0.01
    v_cond, v_uncond = -0.5 * x + bias, -0.5 * x
    dt = float(flow_sigmas(1)[1] - flow_sigmas(1)[0])
    torch.testing.assert_close(three.next_latents[0], x + (v_uncond + 3.0 * (v_cond - v_uncond)) * dt)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(branch_steps=(2, 1), branch_factors=(2, 2)),
        dict(branch_steps=(6,), branch_factors=(2,)),
        dict(branch_steps=(1,), branch_factors=(1,)),
        dict(branch_steps=(1,), branch_factors=()),
        dict(between="euler"),
    ],
)
def test_bad_schedules_are_rejected(kwargs):
    with pytest.raises(ValueError, match="tree:"):
        TreeSchedule(num_steps=6, roots=2, **kwargs)


def test_sde_window_makes_later_steps_ode_and_untrained():
    schedule = TreeSchedule(num_steps=6, roots=2, branch_steps=(1,), branch_factors=(2,), sde_steps=3)
    assert [schedule.is_stochastic(s) for s in range(6)] == [True, True, True, False, False, False]
    assert TreeSchedule(num_steps=6, roots=2).is_stochastic(5)  # 0 = no window


def test_sde_window_must_hold_the_branch_steps():
    with pytest.raises(ValueError, match="inside the SDE window"):
        TreeSchedule(num_steps=6, roots=2, branch_steps=(3,), branch_factors=(2,), sde_steps=3)
    with pytest.raises(ValueError, match="sde_steps"):
        TreeSchedule(num_steps=6, roots=2, sde_steps=7)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_per_prompt_seeds_give_each_prompt_the_forest_it_gets_alone(schedule):
    """With one seed per prompt, a batched forest is the per-prompt forests laid end to end
    (exactly: the stand-in policy is elementwise, so batching cannot change its rounding)."""
    prompts, seeds = ['a "AB"', 'a "CDE"', 'a "F"'], [11, 12, 13]
    sigmas = flow_sigmas(schedule.num_steps)
    batched = sample_tree(LinearPolicy(), prompts, schedule, sigmas, seed=seeds, max_batch=5)
    alone = [
        sample_tree(LinearPolicy(), [p], schedule, sigmas, seed=s)
        for p, s in zip(prompts, seeds, strict=True)
    ]
    nodes = [len(f.node_prompt) for f in alone]
    offsets = np.cumsum([0] + nodes[:-1])
    for k, forest in enumerate(alone):
        mine = batched.edge_prompt == k
        torch.testing.assert_close(batched.next_latents[mine], forest.next_latents, rtol=0, atol=0)
        torch.testing.assert_close(batched.log_prob[mine], forest.log_prob, rtol=0, atol=0)
        assert torch.equal(batched.edge_child[mine], forest.edge_child + int(offsets[k]))
        assert torch.equal(batched.edge_parent[mine], forest.edge_parent + int(offsets[k]))
        leaves = batched.leaf_prompt == k
        assert torch.equal(batched.leaf_nodes[leaves], forest.leaf_nodes + int(offsets[k]))
        np.testing.assert_array_equal(batched.images[leaves.numpy()], forest.images)
    # node ids are grouped by prompt, each prompt's in creation (depth) order
    assert torch.equal(batched.node_prompt, torch.arange(3).repeat_interleave(nodes[0]))
    assert (batched.node_depth.reshape(3, -1).diff(dim=1) >= 0).all()


def test_seed_count_must_match_the_prompts():
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        sample_tree(LinearPolicy(), ["a", "b", "c"], SCHEDULES[0], flow_sigmas(6), seed=[1, 2])
