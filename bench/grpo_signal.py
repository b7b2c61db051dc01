"""How much of one GRPO iteration's gradient is signal, and does a short run learn?

    .venv/bin/python bench/grpo_signal.py [--batches 5] [--prompts 4] [--method flow_grpo]
        [--rewards mixed,ocr,brightness] [--train-iterations 0] [--config config.yaml]

For each reward setup it draws ``--batches`` independent iterations (other prompts, other
noise) from the default study's base model and train split, computes each one's GRPO
gradient exactly as the trainer does (one optimizer step per iteration, no update applied),
and prints the mean cosine between the gradients of different batches with its standard
error. With ``g_b = mu + n_b`` (shared signal plus independent noise), that cosine estimates
``|mu|^2 / E|g_b|^2``; ``1 / cos - 1`` batches of this size would be needed for a gradient
whose signal matches its noise. ``mixed`` is the study's weighted reward, ``ocr`` the OCR
reward alone, and ``brightness`` (mean pixel / 255, not a study reward) a control that the
model can clearly learn.

``--train-iterations N`` then trains a fresh copy for N iterations with the default optimizer
(AdamW, ``train.learning_rate``) and prints the reward on 16 fixed train prompts (ODE, the
trainer's probe) before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import config  # noqa: E402
from pipeline.models.backends import load_policy  # noqa: E402
from pipeline.rewards import build_rewards  # noqa: E402
from pipeline.rewards.base import Reward, RewardOutput  # noqa: E402
from pipeline.rl.trainer import probe, probe_batch, run_iteration  # noqa: E402
from pipeline.train import loop_settings, method_spec  # noqa: E402


class Brightness(Reward):
    """Mean pixel value / 255 (a control reward)."""

    name = "brightness"

    def score(self, images, prompts, metadata):
        return RewardOutput(np.array([np.asarray(i, dtype=np.float32).mean() / 255 for i in images]))


class GradientRecorder:
    """Stands in for the optimizer: keeps the (clipped) gradient of each step, applies none."""

    def __init__(self, parameters):
        self.parameters = list(parameters)
        self.gradients: list[torch.Tensor] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters:
            p.grad = None

    def step(self) -> None:
        flat = [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in self.parameters]
        self.gradients.append(torch.cat(flat).clone())


def mean_pairwise_cosine(gradients: list[torch.Tensor]) -> tuple[float, float]:
    """Mean cosine over the pairs of ``[P]`` gradients, and its standard error (pairs share
    batches, so the error treats the B batches, not the pairs, as independent: SE of the
    mean of each batch's average cosine to the others)."""
    g = torch.stack([v / v.norm() for v in gradients])
    cos = (g @ g.T).numpy()
    pairs = [cos[i, j] for i, j in itertools.combinations(range(len(g)), 2)]
    per_batch = [(cos[i].sum() - 1) / (len(g) - 1) for i in range(len(g))]
    return float(np.mean(pairs)), float(np.std(per_batch, ddof=1) / np.sqrt(len(g)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--method", default="flow_grpo")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per batch")
    parser.add_argument("--rewards", default="mixed,ocr,brightness")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-iterations", type=int, default=0, help="then train this many and probe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = config.load(yaml.safe_load(Path(args.config).read_text()), args.config, check_paths=False)
    base = Path(f"results/{cfg.study}/base_model/model")
    split = Path(f"datasets/{cfg.dataset.name}/train.parquet")
    if not base.is_dir() or not split.is_file():
        raise SystemExit(f"needs the study's base model ({base}) and train split ({split}): run snakemake")
    train_rows = pd.read_parquet(split)
    method = method_spec(cfg.methods[args.method], cfg.sampling.train_steps, cfg.train.sde_steps)
    settings = loop_settings(cfg.train, dataclasses.asdict(cfg.sampling))
    setups = {
        "mixed": dict(cfg.train.reward_weights),
        "ocr": {"ocr": 1.0},
        "brightness": {"brightness": 1.0},
    }
    print(
        f"{args.method}, {args.batches} batches x {args.prompts} prompts x "
        f"{method.schedule.leaves_per_prompt} leaves, guidance {settings.guidance}"
    )
    print(f"{'reward':12s} {'cos':>8s} {'SE':>7s} {'batches for SNR 1':>18s} {'s/batch':>8s}")
    for name in args.rewards.split(","):
        weights = setups[name]
        if name == "brightness":
            rewards = {"brightness": Brightness()}
        else:
            rewards = build_rewards(list(weights), cfg.rewards.settings())
        policy = load_policy("mini", base, device="cpu")
        recorder = GradientRecorder(policy.trainable_parameters())
        train_settings = dataclasses.replace(
            settings, reward_weights=weights, prompts_per_iteration=args.prompts
        )
        # One optimizer step per iteration: one gradient over the whole batch.
        run_settings = dataclasses.replace(train_settings, optimizer_steps_per_iteration=1)
        began = time.perf_counter()
        for batch in range(args.batches):
            # Iteration numbers seed the prompt and noise draws; 1000+ keeps these batches apart
            # from the draws of the --train-iterations run below (iterations 0, 1, ...).
            run_iteration(policy, recorder, rewards, train_rows, method, run_settings, 1000 + batch)
        seconds = (time.perf_counter() - began) / args.batches
        cos, se = mean_pairwise_cosine(recorder.gradients)
        needed = f"{1 / cos - 1:18.0f}" if cos > 0 else f"{'inf':>18s}"
        print(f"{name:12s} {cos:8.4f} {se:7.4f} {needed} {seconds:8.1f}", flush=True)
        if args.train_iterations:
            policy = load_policy("mini", base, device="cpu")
            optimizer = torch.optim.AdamW(
                policy.trainable_parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay
            )
            fixed = probe_batch(train_rows, 16, cfg.train.seed)
            before = probe(policy, rewards, fixed, train_settings, cfg.sampling.train_steps)["reward_mixed"]
            for iteration in range(args.train_iterations):
                run_iteration(policy, optimizer, rewards, train_rows, method, train_settings, iteration)
            after = probe(policy, rewards, fixed, train_settings, cfg.sampling.train_steps)["reward_mixed"]
            print(f"{'':12s} trained {args.train_iterations} iterations: probe {before:.3f} -> {after:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
