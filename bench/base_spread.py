"""How much does "the" base model depend on its pretraining seed, and at which length?

    .venv/bin/python bench/base_spread.py --seeds 0,1,2 --steps 250,500,750 [--config config.yaml]

Pretrains the study's mini model (``config.yaml``'s ``pretrain`` and ``model.mini``, pretraining
seed replaced) once per seed, stopping at every length in ``--steps``. The learning rate is
constant after warm-up and each batch is seeded by (seed, step), so the model at 250 steps of
a 750-step run is the 250-step model: one run per seed gives every length. Each stop is
evaluated as the study's ``sample_eval`` and ``score`` stages evaluate the base model (the test
split at the evaluation's steps and guidance, the study's setting). Prints, per length, each
seed's test OCR, exact match, colour and colour accuracy and their spread across seeds (SD and
range). The spread across pretraining seeds bounds what a different machine's rounding does
to the base: both change the same early, chaotic climb. With ``--groups`` it also samples
each model's SDE groups under the training sampler, as the base model card does (the first
``card.group_prompts`` test prompts, ``card.group_size`` leaves each, the rollouts' guidance and
ODE tail), and prints each reward's mean within-group std and share of groups with any spread:
the signal GRPO has to learn from, i.e. the room RL still has. Outputs in
``results/bench/base_spread/seed<N>/steps<M>/`` (model and evaluation); a rerun reuses them
and continues a seed's pretraining from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.learning_settings import evaluate, overridden  # noqa: E402
from pipeline.config.files import config_hash, read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.config.types import StudyConfig  # noqa: E402
from pipeline.models.mini import MiniPolicy, load_mini, save_mini  # noqa: E402
from pipeline.models.pretraining import build_model, train  # noqa: E402
from pipeline.reporting.tables import per_image_table  # noqa: E402
from pipeline.rl.group_spreads import group_figures  # noqa: E402
from pipeline.workflow import stage_params  # noqa: E402
from pipeline.workflow.sources import sources_digest  # noqa: E402

COLUMNS = {
    "ocr": "ocr",
    "exact": "ocr_exact",
    "colour": "color",
    "colour ok": "color_correct",
    "quality": "quality",
}


class NoTracking:
    """Stands in for the MLflow run that :func:`pipeline.models.pretraining.train` logs its loss to."""

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        del metrics, step


def pretrain_to(cfg: StudyConfig, seed: int, steps: int, work: Path) -> None:
    """Pretrain seed ``seed`` to ``steps`` steps in ``work``, resuming its last checkpoint."""
    pretrain = dataclasses.replace(cfg.pretrain, seed=seed, steps=steps, max_minutes=24 * 60)
    # One checkpoint identity for every length of this seed, so that a longer run resumes.
    identity = dataclasses.asdict(pretrain) | {
        "steps": None,
        "code": sources_digest("pipeline.stages.pretrain_base"),
    }
    model = build_model(cfg.model.mini, seed)
    split = pd.read_parquet(f"datasets/{cfg.dataset.name}/train.parquet")
    train(model, split, pretrain, work, NoTracking(), config_hash(identity))
    save_mini(model, work.parent / f"steps{steps}" / "model")


def group_spread_of(cfg: StudyConfig, model_dir: Path) -> dict[str, float]:
    """Each trained reward's mean within-group std and share of groups with spread, under the
    training sampler (:func:`pipeline.stages.pipeline.rl.group_spreads.group_figures`)."""
    test = pd.read_parquet(f"datasets/{cfg.dataset.name}/test.parquet")
    names = list(cfg.rewards.score)
    rollout = {"guidance": cfg.train.guidance, "sde_steps": cfg.train.sde_steps}
    policy = MiniPolicy(load_mini(model_dir), trainable=False)
    sampling = stage_params.base_group_spreads_params(cfg)["sampling"]
    figures = group_figures(policy, test, sampling, cfg.card, names, cfg.rewards.sections, rollout)
    return {k: v for k, v in figures.items() if k.endswith(("_group_std", "_groups_with_spread"))}


def test_means(rewards: Path) -> dict[str, float]:
    """The test split's mean of each column in :data:`COLUMNS` (NaN where a score is missing)."""
    images = per_image_table(pd.read_parquet(rewards))
    return {name: float(images[column].mean()) for name, column in COLUMNS.items() if column in images}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", default="250,500,750", help="lengths to evaluate, ascending")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/bench/base_spread"))
    parser.add_argument("--groups", action="store_true", help="also each model's SDE group spread")
    args = parser.parse_args(argv)
    cfg = load(overridden(read_yaml(args.config), args.assignments), source=str(args.config))
    seeds = [int(s) for s in args.seeds.split(",")]
    lengths = sorted(int(s) for s in args.steps.split(","))
    if any(n % cfg.pretrain.checkpoint_every for n in lengths):
        raise SystemExit(f"--steps {args.steps}: each must be a multiple of checkpoint_every")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # as the pretrain stage: bit-identical on a machine
    rows = []
    for steps in lengths:  # every seed at a length before the next length: a cut run still compares
        for seed in seeds:
            folder = args.out / f"seed{seed}" / f"steps{steps}"
            if not (folder / "model" / "model.safetensors").is_file():
                pretrain_to(cfg, seed, steps, args.out / f"seed{seed}" / "work")
            rewards = evaluate(cfg, "base", folder / "model", None, folder / "eval")
            rows.append({"steps": steps, "seed": seed, **test_means(rewards)})
            means = ", ".join(f"{name} {value:.3f}" for name, value in test_means(rewards).items())
            print(f"steps {steps} seed {seed}: {means}", flush=True)
            if args.groups:
                spread = group_spread_of(cfg, folder / "model")
                rows[-1] |= spread
                print("  SDE groups: " + ", ".join(f"{k} {v:.3f}" for k, v in spread.items()), flush=True)
    table = pd.DataFrame(rows)
    print(f"\nTest split at {cfg.sampling.eval_steps} ODE steps, CFG {cfg.sampling.guidance}; seeds {seeds}")
    for steps, group in table.groupby("steps"):
        cells = []
        for name in COLUMNS:
            if name in group:
                values = group[name]
                cells.append(
                    f"{name} {values.mean():.3f} (SD {values.std(ddof=1):.3f}, "
                    f"range {values.min():.3f}-{values.max():.3f})"
                )
        print(f"{steps} steps: " + "; ".join(cells))
        spread_columns = [c for c in group.columns if c.endswith(("_group_std", "_groups_with_spread"))]
        if spread_columns:
            print(
                "  SDE groups (mean over seeds): "
                + ", ".join(f"{c} {group[c].mean():.3f}" for c in spread_columns)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
