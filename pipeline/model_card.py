"""Stage ``base_model_card``: evaluate the pretrained mini base model and write its card.

    python -m pipeline.model_card --model-dir DIR/model --train-info DIR/train_info.json \
        --test test.parquet --samples eval/base/samples.parquet --rewards eval/base/rewards.parquet \
        [--vocab vocab.json] --config-json '{...}' --out-dir DIR/card

Reports the base model's test-split scores from its evaluation (the ``sample_eval`` and
``score`` stages' outputs for the model ``base``: the evaluation's ODE sampler, not sampled
again here) — OCR reward and exact match, colour reward and accuracy, quality — split by seen
and held-out words where the vocabulary is given, and measures what RL will have to work with:
SDE groups under the training sampler (the rollouts' steps, noise, guidance and SDE window,
several samples per prompt), with each reward's mean within-group std (the unit of the
report's standardised gains) and share of groups with spread.
Writes ``README.md`` (the card), ``figures.json`` and ``samples.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from pipeline import io, tracking
from pipeline.config import CardConfig, RewardsConfig, SamplingConfig
from pipeline.evaluation import group_spread, score_images
from pipeline.images import image_grid
from pipeline.models.mini import MiniPolicy, load_mini
from pipeline.progress import Progress
from pipeline.report_tables import metric_label, per_image_table, reward_metrics
from pipeline.rewards import REWARDS, build_rewards
from pipeline.sampling.schedule import TreeSchedule, flow_sigmas
from pipeline.sampling.tree import sample_tree


def summarise(scores: pd.DataFrame) -> dict[str, float]:
    """Mean of every reward column, with exact match and colour accuracy as rates."""
    return {column: round(float(scores[column].mean()), 4) for column in scores.columns}


def test_figures(samples: pd.DataFrame, rewards: pd.DataFrame, heldout: set[str]) -> dict:
    """The base model's evaluation scores (first evaluation seed), summarised like the card's
    tables, split by seen and held-out words when ``heldout`` is given."""
    seed = samples.seed.min()
    images = per_image_table(rewards.assign(model="base"))
    images = images[images.seed == seed]
    columns = [c for c in reward_metrics(REWARDS) if c in images]
    texts = samples[samples.seed == seed].set_index("line_id")["text"]
    scores = images.set_index("line_id")[columns]
    figures = {"test_ode": summarise(scores), "test_prompts": len(scores)}
    if heldout:
        unseen = texts.reindex(scores.index).isin(heldout).to_numpy()
        figures["test_ode_seen_words"] = summarise(scores[~unseen])
        figures["test_ode_heldout_words"] = summarise(scores[unseen]) if unseen.any() else {}
    return figures


def group_figures(
    policy: MiniPolicy,
    test: pd.DataFrame,
    sampling: SamplingConfig,
    card: CardConfig,
    reward_names: list[str],
    reward_settings: dict,
    rollout: dict,
) -> dict:
    """SDE groups of the first test prompts under the training sampler (``rollout``: the
    rollouts' ``guidance`` and ``sde_steps``): each reward's mean, mean within-group std and
    share of groups with spread."""
    rewards = build_rewards(reward_names, reward_settings)
    prompts, texts, colors = list(test.prompt), list(test.text), list(test.color)
    n = min(card.group_prompts, len(test))
    schedule = TreeSchedule(
        num_steps=sampling.train_steps, roots=card.group_size, between="sde", sde_steps=rollout["sde_steps"]
    )
    with Progress("base_model_card SDE groups", sampling.train_steps, "step") as progress:
        groups = sample_tree(
            policy,
            prompts[:n],
            schedule,
            flow_sigmas(sampling.train_steps, sampling.shift),
            guidance=rollout["guidance"],
            noise_level=sampling.noise_level,
            sde_type=sampling.sde_type,
            max_batch=sampling.max_batch,
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


def first_images(samples: pd.DataFrame, root: Path, count: int) -> np.ndarray:
    """uint8 ``[count, H, W, 3]``: the first evaluation images of the first seed."""
    rows = samples[samples.seed == samples.seed.min()].head(count)
    return np.stack([np.asarray(Image.open(root / path).convert("RGB")) for path in rows.image_path])


CARD = """# Mini base model

Generated by the `base_model_card` rule from measured figures; do not edit by hand.

## Architecture

- {params:.2f}M parameters: a character-level text encoder ({text_layers} Transformer layers,
  width {d_model}) and a diffusers `UNet2DConditionModel` (channels {channels}, one layer per
  block, cross-attention at the lower resolutions) on {unshuffle}x pixel-unshuffled
  {height}x{width} RGB images; it predicts the flow-matching velocity in pixel space.
- Character position map: {position_map}
- **What the encoder reads**: a parsed view of the prompt — the target text (the first
  double-quoted span, up to {max_text_len} characters, one token per character) and the
  colour the prompt names for it (the curated sentence `The color of the text "..." is
  <colour>.`, else the colour the curation rules read around the span, else none). No other
  prompt words and no side channel of the target.

## Training

Rectified flow (velocity loss, logit-normal noise levels, AdamW with warm-up, caption
dropout{ema}) on images rendered on the fly from the curated train split (one monospace bold
font, fixed left-aligned layout, colour shades inside each name's region, light, dark or
competing backgrounds): **{steps} steps in {minutes:.1f} min** on this machine.{cut_short}

## Base model on the test split (ODE, {eval_steps} steps, guidance {guidance})

{test_rows}

## SDE groups: what RL sees

The training sampler: {train_steps} steps, noise level {noise_level}, guidance
{rollout_guidance}, {sde_window}; {group_size} samples for each of {group_prompts} prompts. The
mean within-group std of each reward is the unit of the report's standardised gains.

| reward | mean | mean within-group std | groups with spread |
|---|---|---|---|
{group_rows}

`samples.png`: ODE samples of the first test prompts.
"""

POSITION_MAP = """{channels} channels: character i's embedding painted into the i-th column
  band of the fixed layout (first character at {left:.0f} px, {advance:.2f} px per character).
  It tells the denoiser where each letter goes; it works only because the training layout
  is fixed.{extras}"""
COORDINATES = """ Two fixed coordinate channels follow the map: the phase inside each character
  cell (0 to 1 left to right) and the vertical position, so that a pixel knows where in its
  glyph it lies."""
TEMPLATES = """ Then {channels} channels of learned per-character templates: each character token
  owns a trainable [{channels}, {height}, cell width] tensor, painted into its cell column by
  column, so the character's shape can be learned as a spatial pattern directly rather than
  synthesised from a constant band value (the README gives the measurements behind this)."""


def _test_table(figures: dict) -> str:
    """The test scores as a Markdown table: a row per prompt subset, a column per metric
    (each scored reward and its indicators, named as the report names them)."""
    metrics = list(figures["test_ode"])
    header = ["prompts", *(metric_label(m) for m in metrics)]
    subsets = [(f"all ({figures['test_prompts']})", figures["test_ode"])]
    subsets += [
        (label, figures[key])
        for label, key in (
            ("words seen in training", "test_ode_seen_words"),
            ("held-out words", "test_ode_heldout_words"),
        )
        if figures.get(key)
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, values in subsets:
        cells = [values.get(m) for m in metrics]
        lines.append(f"| {label} | " + " | ".join("–" if v is None else f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def cut_short_warning(info: dict) -> str:
    """A paragraph that no reader can miss when the time guard ended pretraining early."""
    if not info.get("cut_short"):
        return ""
    return (
        f"\n\n> **WARNING: cut short by its time guard after {info['steps']} of "
        f"{info['steps_configured']} steps** (pretrain.max_minutes, on_time_limit: stop). "
        "This is not the configured base model, and figures from it are not comparable."
    )


def render_card(figures: dict, info: dict, sampling: SamplingConfig) -> str:
    cfg, groups = info["model_config"], figures["sde_groups"]
    group_rows = [
        f"| {name} | {groups[name]:.3f} | {groups[f'{name}_group_std']:.3f} | "
        f"{groups[f'{name}_groups_with_spread']:.2f} |"
        for name in REWARDS
        if f"{name}_group_std" in groups
    ]
    position_map = (
        POSITION_MAP.format(
            channels=cfg["position_map_channels"],
            left=cfg["left_px"],
            advance=cfg["advance_px"],
            extras=(COORDINATES if cfg.get("cell_coordinates") else "")
            + (
                TEMPLATES.format(channels=cfg["template_channels"], height=cfg["height"])
                if cfg.get("template_channels")
                else ""
            ),
        )
        if cfg["position_map_channels"]
        else "off."
    )
    return CARD.format(
        params=info["parameters"] / 1e6,
        text_layers=cfg["text_layers"],
        d_model=cfg["d_model"],
        channels=cfg["block_out_channels"],
        unshuffle=cfg["unshuffle"],
        height=cfg["height"],
        width=cfg["width"],
        position_map=position_map,
        ema=f", weights averaged with decay {info['ema_decay']}" if info.get("ema_decay") else "",
        max_text_len=cfg["max_text_len"],
        steps=info["steps"],
        cut_short=cut_short_warning(info),
        minutes=info["train_seconds"] / 60,
        eval_steps=sampling.eval_steps,
        guidance=sampling.guidance,
        test_rows=_test_table(figures),
        train_steps=sampling.train_steps,
        noise_level=sampling.noise_level,
        rollout_guidance=groups["guidance"],
        sde_window=(
            f"SDE on steps 0-{groups['sde_steps'] - 1}, ODE after"
            if groups["sde_steps"]
            else "SDE on every step"
        ),
        group_size=groups["group_size"],
        group_prompts=groups["prompts"],
        group_rows="\n".join(group_rows),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--train-info", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True, help="the base model's samples.parquet")
    parser.add_argument("--rewards", type=Path, required=True, help="the base model's rewards.parquet")
    parser.add_argument("--vocab", type=Path, default=None)
    parser.add_argument("--config-json", required=True, help='{"sampling": ..., "rewards": ..., "card": ...}')
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json)
    sampling, card = SamplingConfig(**raw["sampling"]), CardConfig(**raw["card"])
    reward_names = list(raw["rewards"]["score"])
    settings = RewardsConfig().settings() | {k: v for k, v in raw["rewards"].items() if k != "score"}
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    info = json.loads(args.train_info.read_text())
    heldout = set(json.loads(args.vocab.read_text())["heldout_words"]) if args.vocab else set()
    policy = MiniPolicy(load_mini(args.model_dir), trainable=False)
    with tracking.stage_run(args, raw) as run:
        samples = pd.read_parquet(args.samples)
        figures = test_figures(samples, pd.read_parquet(args.rewards), heldout)
        figures["sde_groups"] = group_figures(
            policy, pd.read_parquet(args.test), sampling, card, reward_names, settings, raw["rollout"]
        )
        figures |= {
            "train_steps": info["steps"],
            "train_seconds": info["train_seconds"],
            "parameters": info["parameters"],
        }
        io.write_json(args.out_dir / "figures.json", figures)
        with io.atomic_path(args.out_dir / "samples.png") as tmp:
            Image.fromarray(image_grid(first_images(samples, args.samples.parent, 16), 2)).save(
                tmp, format="png"
            )
        io.write_text(args.out_dir / "README.md", render_card(figures, info, sampling))
        run.log_metrics(
            {f"test_{k}": v for k, v in figures["test_ode"].items()}
            | {f"sde_{k}": v for k, v in figures["sde_groups"].items()}
        )
        run.log_artifact(args.out_dir / "samples.png")
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
