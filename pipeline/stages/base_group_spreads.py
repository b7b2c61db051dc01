"""Stage ``base_group_spreads``: how much each reward varies within a group of the base model's
rollouts, under the training sampler.

    python -m pipeline.stages.base_group_spreads --model-dir DIR/model --test test.parquet \
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

from pipeline.config.types import CardConfig
from pipeline.models.mini import MiniPolicy, load_mini
from pipeline.rl.group_spreads import group_figures
from pipeline.runtime import io, tracking


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
    settings = {k: v for k, v in raw["rewards"].items() if k != "score"}
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
