"""The iteration's forests sampled in one batched pass equal the per-prompt forests (one
``sample_tree`` call per prompt, merged in order): leaf images, log-probabilities, tree
bookkeeping, and the gradient of the GRPO loss computed on them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.config.types import MethodConfig, TrainConfig
from pipeline.models.backends import load_policy
from pipeline.rl import rollouts, update
from pipeline.rl.credit import edge_weights
from pipeline.rl.reference_rollout import per_prompt_forests
from pipeline.rl.settings import loop_settings, method_spec
from tests.smoke.tiny import tiny_mini_dir, train_config_json

PROMPTS = [
    f'A sign that reads "{w}". The color of the text "{w}" is {c}.'
    for w, c in (
        ("CAT", "red"),
        ("SUN", "blue"),
        ("TREE", "green"),
    )
]
INDEX_FIELDS = ("node_prompt", "node_depth", "node_parent", "edge_parent", "edge_child", "edge_step")
INDEX_FIELDS += ("edge_prompt", "trainable", "leaf_nodes", "leaf_prompt")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    torch.manual_seed(0)
    return load_policy("mini", tiny_mini_dir(tmp_path_factory.mktemp("mini")), device="cpu")


def _setup(method_name: str):
    raw = json.loads(train_config_json(method_name))
    settings = loop_settings(TrainConfig(**raw["train"]), raw["sampling"])
    method = method_spec(MethodConfig(**raw["method"]), raw["sampling"]["train_steps"])
    return method, settings


@pytest.mark.parametrize("method_name", ["flow_grpo", "multi_grpo"])
def test_batched_forest_equals_per_prompt_forests(policy, method_name):
    method, settings = _setup(method_name)
    batched = rollouts.sample_prompts(policy, PROMPTS, 0, method, settings, iteration=5)
    reference = per_prompt_forests(policy, PROMPTS, 0, method, settings, iteration=5)
    for name in INDEX_FIELDS:
        assert torch.equal(getattr(batched, name), getattr(reference, name)), name
    assert batched.nfe == reference.nfe and batched.prompts == reference.prompts
    for name in ("sigma", "sigma_next", "latents", "next_latents", "log_prob"):
        torch.testing.assert_close(getattr(batched, name), getattr(reference, name), rtol=1e-4, atol=1e-5)
    # uint8 images: a float difference of 1e-6 can flip a pixel's rounding, never more than one level
    images = rollouts.leaf_images(policy, batched, settings)
    diff = np.abs(images.astype(int) - rollouts.leaf_images(policy, reference, settings).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_a_different_iteration_draws_different_noise(policy):
    method, settings = _setup("flow_grpo")
    one = rollouts.sample_prompts(policy, PROMPTS, 0, method, settings, iteration=5)
    other = rollouts.sample_prompts(policy, PROMPTS, 0, method, settings, iteration=6)
    assert not torch.allclose(one.next_latents, other.next_latents)


def test_update_gradient_is_unchanged(policy):
    method, settings = _setup("multi_grpo")
    settings = dataclasses.replace(settings, beta=0.04)
    gradients = []
    for rollout in (
        rollouts.sample_prompts(policy, PROMPTS, 0, method, settings, iteration=2),
        per_prompt_forests(policy, PROMPTS, 0, method, settings, iteration=2),
    ):
        leaf_rewards = torch.linspace(0, 1, 3 * len(rollout.leaf_nodes)).reshape(-1, 3)
        weights = torch.tensor([1.0, 1.0, 0.1])
        advantages = update.edge_advantages(rollout, leaf_rewards, weights, method)
        edges = update.trained_edges(rollout, advantages, method.schedule.num_steps, False)
        assert len(edges) > 0
        cond, uncond = policy.encode(rollout.prompts)
        for param in policy.trainable_parameters():
            param.grad = None
        loss_weights = edge_weights(
            rollout.edge_child,
            rollout.edge_prompt,
            rollout.leaf_nodes,
            rollout.leaf_prompt,
            rollout.node_parent,
        )
        loss, _, _ = update.edge_loss(
            policy, rollout, edges, advantages, loss_weights, cond, uncond, settings
        )
        loss.backward()
        gradients.append(
            torch.cat([p.grad.flatten() for p in policy.trainable_parameters() if p.grad is not None])
        )
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-3, atol=1e-6)
    assert gradients[0].abs().max() > 0
