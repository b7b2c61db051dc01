"""Images per second of whole GRPO iterations of the mini model, phase by phase, for the
previous code path and the current one, timed side by side in the same run.

    .venv/bin/python bench/iteration_throughput.py [--settings default,large] \
        [--methods flow_grpo,multi_grpo] [--repeats 3] [--base-model DIR] [--device cpu]

Settings: ``default`` is config.yaml's ``train`` section as it stands; ``large`` is 32
prompts x 8 leaves (256 images) with one optimizer step and ``edge_fraction`` 0.25. Paths:
  * ``previous``: the rollout as it was before batched forests (one ``sample_tree`` call per
    prompt, forests merged) and the leaves scored in this process, image by image;
  * ``current``: :func:`pipeline.rl.trainer.run_iteration` with config.yaml's scoring
    settings (``train.score_workers``, or ``--score-workers``);
  * ``channels_last``: the same with the denoiser's weights in channels-last layout
    (``train.channels_last``).
Both run the same iteration of the same policy (weights and optimizer reset before each
timed iteration); iterations alternate between paths so that machine noise hits both.
Prints, per setting, method and path, the median seconds of each phase (rollout, decode,
scoring, advantages, update), images per second per phase and in total, and the ratio of
the totals. The base model is a randomly initialised mini model of config.yaml's
architecture unless ``--base-model`` names a pretrained one (the cost per image is the same;
OCR sees noise instead of letters). The train split is generated and curated in memory from
config.yaml's generator settings.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.load import load  # noqa: E402
from pipeline.config.types import StudyConfig  # noqa: E402
from pipeline.data import curation, generator
from pipeline.data.palette import COLOR_NAMES, PALETTE  # noqa: E402
from pipeline.data.text_images import contrasting_background, render  # noqa: E402
from pipeline.models.backends import load_policy  # noqa: E402
from pipeline.models.mini import MiniConfig, MiniModel, save_mini  # noqa: E402
from pipeline.rewards import build_rewards  # noqa: E402
from pipeline.rewards.scoring import LeafScorer  # noqa: E402
from pipeline.rl import rollouts, trainer  # noqa: E402
from pipeline.rl.reference_rollout import per_prompt_forests  # noqa: E402
from pipeline.rl.settings import loop_settings, method_spec  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PHASES = ("rollout", "decode", "scoring", "advantages", "update")
LARGE = {"prompts_per_iteration": 32, "optimizer_steps_per_iteration": 1, "edge_fraction": 0.25}


def previous_sample_prompts(policy, prompts, first, method, settings, iteration):
    """The rollout before batched forests; decoding is the caller's, as in the current path."""
    return per_prompt_forests(policy, prompts, first, method, settings, iteration)


def train_split(cfg: StudyConfig) -> pd.DataFrame:
    spec = generator.load_spec(REPO / "datasets" / "sources" / "ocr_scenes.yaml")
    prompts, _, _ = generator.generate(spec, cfg.dataset.source.generator)
    table, _ = curation.curate(prompts, range(len(prompts)), cfg.dataset.curation.seed)
    return table.to_pandas()


def base_model_dir(cfg: StudyConfig, folder: Path) -> Path:
    torch.manual_seed(0)
    mini = dataclasses.asdict(cfg.model.mini)
    mini["block_out_channels"] = tuple(mini["block_out_channels"])
    save_mini(MiniModel(MiniConfig(**mini)), folder)
    return folder


def timed_iteration(path: str, policy, initial: dict, rewards, scorer, split, method, settings) -> dict:
    """One iteration (iteration index 0) from the initial weights; its metrics row."""
    layout = torch.channels_last if path == "channels_last" else torch.contiguous_format
    policy.module.to(memory_format=layout)
    policy.module.load_state_dict(initial)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-4)
    original = rollouts.sample_prompts
    if path == "previous":
        rollouts.sample_prompts = previous_sample_prompts
    try:
        return trainer.run_iteration(
            policy,
            optimizer,
            LeafScorer(rewards) if path == "previous" else scorer,
            split,
            method,
            settings,
            0,
        )
    finally:
        rollouts.sample_prompts = original


def scoring_comparison(rewards, settings: dict, workers: list[int], images: int, repeats: int) -> None:
    """The scoring phase alone on ``images`` rendered 32 x 128 words: in process vs pools."""
    words = ["CAT", "TIGER", "MAPLE", "ROCKET", "SUN", "QUIZ", "BLUE", "HELLO"]
    pixels, prompts, texts, colors = [], [], [], []
    for i in range(images):
        word, colour = words[i % len(words)], COLOR_NAMES[i % len(COLOR_NAMES)]
        rgb = PALETTE[colour]
        pixels.append(render(word, rgb, contrasting_background(rgb), size=(128, 32), font_px=20))
        prompts.append(f'A sign that reads "{word}". The color of the text "{word}" is {colour}.')
        texts.append(word)
        colors.append(colour)
    pixels = np.stack(pixels)
    print(f"scoring alone, {images} rendered 32 x 128 words (median of {repeats}):")
    reference = None
    for count in [0, *workers]:
        scorer = LeafScorer(rewards, count, settings)
        try:
            scorer(pixels[:8], prompts[:8], texts[:8], colors[:8])  # workers built and warm
            seconds = []
            for _ in range(repeats):
                began = time.perf_counter()
                table = scorer(pixels, prompts, texts, colors)
                seconds.append(time.perf_counter() - began)
        finally:
            scorer.close()
        reference = table if reference is None else reference
        same = table.equals(reference)
        label = "in process" if count <= 1 else f"{count} workers"
        median = statistics.median(seconds)
        print(
            f"  {label:11s} {median:6.2f} s = {images / median:6.1f} img/s; scores equal in-process: {same}"
        )


def report(label: str, rows: list[dict], images: int) -> float:
    seconds = {phase: statistics.median(r.get(f"seconds_{phase}", 0.0) for r in rows) for phase in PHASES}
    total = statistics.median(r["seconds"] for r in rows)
    parts = "  ".join(
        f"{p} {s:6.2f} s ({images / s:7.1f} img/s)" if s > 0 else f"{p} -" for p, s in seconds.items()
    )
    print(f"  {label:9s} total {total:6.2f} s = {images / total:6.1f} img/s | {parts}")
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="default,large", help="comma-separated: default, large")
    parser.add_argument("--methods", default="flow_grpo,multi_grpo")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--base-model", type=Path, default=None, help="pretrained mini model folder")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument(
        "--compare-workers", default="2", help="pool sizes for the scoring-alone comparison ('' = skip)"
    )
    parser.add_argument(
        "--score-workers",
        type=int,
        default=None,
        help="reward worker processes (default: train.score_workers)",
    )
    args = parser.parse_args(argv)

    raw = yaml.safe_load(args.config.read_text())
    cfg = load(raw, str(args.config), check_paths=False)
    if args.score_workers is None:
        args.score_workers = cfg.train.score_workers
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    split = train_split(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.base_model or base_model_dir(cfg, Path(tmp) / "mini")
        policy = load_policy("mini", model_dir, device=device)
    initial = copy.deepcopy(policy.module.state_dict())
    names = [n for n, w in cfg.train.reward_weights.items() if w != 0]
    rewards = build_rewards(names, cfg.rewards.sections)
    scorer = LeafScorer(rewards, args.score_workers, cfg.rewards.sections)
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, score_workers "
        f"{args.score_workers}, rewards {names}, medians of {args.repeats} iterations"
    )
    if args.compare_workers:
        pools = [int(n) for n in args.compare_workers.split(",")]
        scoring_comparison(rewards, cfg.rewards.sections, pools, 256, args.repeats)
    warm_up = loop_settings(cfg.train, dataclasses.asdict(cfg.sampling))
    warm_method = method_spec(cfg.methods["flow_grpo"], cfg.sampling.train_steps)
    timed_iteration("current", policy, initial, rewards, scorer, split, warm_method, warm_up)
    try:
        for setting in args.settings.split(","):
            train_cfg = dataclasses.replace(cfg.train, **(LARGE if setting == "large" else {}))
            settings = loop_settings(train_cfg, dataclasses.asdict(cfg.sampling))
            for name in args.methods.split(","):
                method = method_spec(cfg.methods[name], cfg.sampling.train_steps, train_cfg.sde_steps)
                images = settings.prompts_per_iteration * method.schedule.leaves_per_prompt
                prompts = settings.prompts_per_iteration
                print(
                    f"{setting} ({prompts} prompts x {images // prompts} leaves = {images} images), {name}:"
                )
                rows = {"previous": [], "current": [], "channels_last": []}
                for _ in range(args.repeats):
                    for path in rows:
                        began = time.perf_counter()
                        row = timed_iteration(path, policy, initial, rewards, scorer, split, method, settings)
                        rows[path].append(row | {"seconds": time.perf_counter() - began})
                totals = {path: report(path, rows[path], images) for path in rows}
                for path in ("current", "channels_last"):
                    same = all(
                        abs(a["reward_mixed"] - b["reward_mixed"]) < 1e-3
                        for a, b in zip(rows["previous"], rows[path], strict=True)
                    )
                    print(
                        f"  {path}: speed-up {totals['previous'] / totals[path]:.2f}x over previous; same "
                        f"mixed reward: {same} ({rows[path][0]['reward_mixed']:.4f})"
                    )
    finally:
        scorer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
