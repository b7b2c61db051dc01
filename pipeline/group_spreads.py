"""Stage ``base_group_spreads``: how much each reward varies within a group of the base model's
rollouts, under the training sampler.

    python -m pipeline.group_spreads --model-dir DIR/model --test test.parquet \
        --config-json '{"sampling": ..., "rewards": ..., "card": ..., "rollout": ...}' --out FILE.json

SDE groups of the first ``card.group_prompts`` test prompts, ``card.group_size`` samples each,
with the rollouts' steps, noise, guidance and SDE window; writes each reward's mean, mean
within-group std (``<reward>_group_std``: the unit of the report's standardised gains, and the
control arm's ``1 / std`` weights) and share of groups with spread. Its own rule, apart from the
card, so that an evaluation setting the card quotes retrains no control arm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from pipeline import io, tracking
from pipeline.config import CardConfig, RewardsConfig
from pipeline.evaluation import group_spread, score_images
from pipeline.models.mini import MiniPolicy, load_mini
from pipeline.progress import Progress
from pipeline.rewards import build_rewards
from pipeline.sampling.schedule import TreeSchedule, flow_sigmas
from pipeline.sampling.tree import sample_tree


def summarise(scores: pd.DataFrame) -> dict[str, float]:
    """Mean of every reward column, with exact match and colour accuracy as rates."""
    return {column: round(float(scores[column].mean()), 4) for column in scores.columns}


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--config-json", required=True, help='{"sampling", "rewards", "card", "rollout"}')
    parser.add_argument("--out", type=Path, required=True, help="the spreads' JSON file")
    parser.add_argument("--threads", type=int, default=0)
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json)
    reward_names = list(raw["rewards"]["score"])
    settings = RewardsConfig().settings() | {k: v for k, v in raw["rewards"].items() if k != "score"}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    policy = MiniPolicy(load_mini(args.model_dir), trainable=False)
    with tracking.stage_run(args, raw) as run:
        figures = group_figures(
            policy,
            pd.read_parquet(args.test),
            raw["sampling"],
            CardConfig(**raw["card"]),
            reward_names,
            settings,
            raw["rollout"],
        )
        io.write_json(args.out, figures)
        run.log_metrics({f"sde_{k}": v for k, v in figures.items()})
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
