"""The base model's SDE groups under the training sampler: each reward's within-group spread
(the report's unit of z, and the control arm's weights)."""

from __future__ import annotations

import pandas as pd

from pipeline.config.types import CardConfig
from pipeline.models.mini import MiniPolicy
from pipeline.rewards import build_rewards
from pipeline.rewards.scoring import group_spread, score_images, summarise
from pipeline.runtime.progress import Progress
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.tree import sample_tree
from pipeline.sampling.tree_schedule import TreeSchedule


def group_figures(
    policy: MiniPolicy,
    test: pd.DataFrame,
    sampling: dict,
    card: CardConfig,
    reward_names: list[str],
    reward_settings: dict,
    rollout: dict,
) -> dict:
    """SDE groups of the first test prompts under the training sampler (``sampling``: the
    rollout keys ``train_steps``, ``noise_level``, ``sde_type``, ``shift``, ``max_batch``;
    ``rollout``: the rollouts' ``guidance`` and ``sde_steps``): each reward's mean, mean
    within-group std and share of groups with spread."""
    rewards = build_rewards(reward_names, reward_settings)
    prompts, texts, colors = list(test.prompt), list(test.text), list(test.color)
    n = min(card.group_prompts, len(test))
    steps = sampling["train_steps"]
    schedule = TreeSchedule(
        num_steps=steps, roots=card.group_size, between="sde", sde_steps=rollout["sde_steps"]
    )
    with Progress("base_group_spreads", steps, "step") as progress:
        groups = sample_tree(
            policy,
            prompts[:n],
            schedule,
            flow_sigmas(steps, sampling["shift"]),
            guidance=rollout["guidance"],
            noise_level=sampling["noise_level"],
            sde_type=sampling["sde_type"],
            max_batch=sampling["max_batch"],
            seed=card.seed + 1,
            on_step=lambda step: progress.advance(),
        )
    prompt_of_leaf = groups.leaf_prompt.numpy()
    group_scores = score_images(
        rewards,
        groups.images,
        [prompts[i] for i in prompt_of_leaf],
        [texts[i] for i in prompt_of_leaf],
        [colors[i] for i in prompt_of_leaf],
    )
    return {
        "prompts": n,
        "group_size": card.group_size,
        "guidance": rollout["guidance"],
        "sde_steps": rollout["sde_steps"],
        **summarise(group_scores),
        **group_spread(group_scores, prompt_of_leaf, list(rewards)),
    }
