"""Which rollout setting should training use? The base model under each candidate sampler.

    .venv/bin/python bench/rollout_setting.py [--config config.yaml] [--prompts 24] [--group 8]

For each candidate (rollout guidance x how the last stochastic step ends) this samples SDE
groups of the study's base model on ``--prompts`` test prompts (``--group`` leaves each, the
training sampler: ``sampling.train_steps`` steps, ``sampling.noise_level``) and prints:

* each reward's mean over the leaves and its mean within-group std (the spread GRPO learns
  from), with the share of groups whose colour reward varies;
* the divergence: the pixel std (0-255) of a leaf minus the image the ODE would have made from
  the state before the last stochastic step (how far that step's noise moves the image), and
  its high-frequency part (the difference minus its 3x3 box blur): white noise left in the
  image keeps nearly all of its std there, a change of content little;
* the pixel noise (0-255) of the leaves and of the test's ODE samples of the same prompts:
  a robust estimate from the median absolute Laplacian (text edges are a minority of the
  pixels, so the median sees the background), its excess in the leaves being leftover noise;
* the 25th and 50th percentiles of each reward's within-group std (the std floor's scale), and
  the 25th percentile over the groups whose reward varies (the floor's rule once many groups agree);
* the gap between the leaves' mean reward and the ODE samples' of the same prompts at the
  same guidance and the test's ``sampling.eval_steps`` (do scored rollouts look like test images?);
* seconds per rollout leaf (median of the candidate's batches), and its NFE per leaf.

Then the base model's ODE test figures at each guidance, on the whole test split. Candidates:
``sde`` (Flow-SDE on every step but the last), ``sde_ode_last`` (the last stochastic step made
ODE: ``train.sde_steps = train_steps - 2``) and ``cps`` (coefficient-preserving noise).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.files import read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.models.backends import load_policy  # noqa: E402
from pipeline.rewards import build_rewards  # noqa: E402
from pipeline.rewards.scoring import group_spread, score_images  # noqa: E402
from pipeline.sampling.schedule import flow_sigmas  # noqa: E402
from pipeline.sampling.tree import (  # noqa: E402
    guided_velocity,
    ode_samples,  # noqa: E402
    sample_tree,
)
from pipeline.sampling.tree_schedule import TreeSchedule  # noqa: E402

CANDIDATES = {"sde": ("sde", 0), "sde_ode_last": ("sde", -2), "cps": ("cps", 0)}


def ode_from(policy, latents, prompt_rows, prompts, sigmas, first_step, guidance, max_batch):
    """Continue ``latents`` ``[B, C, H, W]`` (at ``sigmas[first_step]``) to sigma 0 by Euler steps."""
    cond, uncond = policy.encode(prompts)
    x = latents.to(policy.device)
    for step in range(first_step, len(sigmas) - 1):
        sigma = sigmas[step].expand(len(x)).to(policy.device)
        v, _ = guided_velocity(
            policy, x, sigma, cond.select(prompt_rows), uncond.select(prompt_rows), guidance, max_batch
        )
        x = x + v * (sigmas[step + 1] - sigmas[step])
    return policy.decode(x)


LAPLACIAN_NORM = 6.0  # sqrt of the sum of squares of [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]


def pixel_noise(images: np.ndarray) -> float:
    """Mean over ``[N, H, W, 3]`` uint8 images of a robust white-noise std (0-255): 1.4826 x the
    median |second difference| (the 3x3 kernel above, per channel) / the kernel's norm."""
    x = images.astype(np.float64)
    lap = (
        x[:, :-2, :-2]
        - 2 * x[:, :-2, 1:-1]
        + x[:, :-2, 2:]
        - 2 * x[:, 1:-1, :-2]
        + 4 * x[:, 1:-1, 1:-1]
        - 2 * x[:, 1:-1, 2:]
        + x[:, 2:, :-2]
        - 2 * x[:, 2:, 1:-1]
        + x[:, 2:, 2:]
    )
    per_image = np.median(np.abs(lap).reshape(len(x), -1), axis=1) * 1.4826 / LAPLACIAN_NORM
    return float(per_image.mean())


def high_frequency_std(difference: np.ndarray) -> np.ndarray:
    """``[N]``: the std of each ``[H, W, 3]`` difference minus its 3x3 box blur (edges replicated)."""
    padded = np.pad(difference, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = difference.shape[1:3]
    blur = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    return (difference - blur).reshape(len(difference), -1).std(axis=1)


def candidate_row(policy, rewards, test, cfg, name, guidance, args) -> dict:
    sde_type, window = CANDIDATES[name]
    steps = cfg.sampling.train_steps
    sde_steps = steps + window if window < 0 else 0
    schedule = TreeSchedule(num_steps=steps, roots=args.group, between="sde", sde_steps=sde_steps)
    sigmas = flow_sigmas(steps, cfg.sampling.shift)
    prompts, texts, colors = list(test.prompt), list(test.text), list(test.color)
    seconds, parts = [], []
    for start in range(0, len(prompts), args.batch_prompts):
        chunk = prompts[start : start + args.batch_prompts]
        began = time.perf_counter()
        with torch.no_grad():
            forest = sample_tree(
                policy,
                chunk,
                schedule,
                sigmas,
                guidance=guidance,
                noise_level=cfg.sampling.noise_level,
                sde_type=sde_type,
                max_batch=cfg.sampling.max_batch,
                seed=[args.seed + start + i for i in range(len(chunk))],
            )
        seconds.append((time.perf_counter() - began) / len(forest.leaf_nodes))
        parts.append((start, forest))
    leaf_prompt = np.concatenate([f.leaf_prompt.numpy() + s for s, f in parts])
    images = np.concatenate([f.images for _, f in parts])
    take = lambda column: [column[i] for i in leaf_prompt]  # noqa: E731
    scores = score_images(rewards, images, take(prompts), take(texts), take(colors))
    # Leftover noise: the ODE from the state before the last stochastic step, against the leaf.
    last = max(s for s in range(steps) if schedule.is_stochastic(s) and s < steps - 1)
    leftover, high = [], []
    for _, forest in parts:
        into_leaf = forest.leaf_edges()
        edge_of = {int(c): e for e, c in enumerate(forest.edge_child)}
        before = []
        for edge in into_leaf.tolist():
            while int(forest.edge_step[edge]) > last:
                edge = edge_of[int(forest.edge_parent[edge])]
            before.append(edge)
        before = torch.tensor(before)
        clean = ode_from(
            policy,
            forest.latents[before],
            forest.edge_prompt[before].tolist(),
            forest.prompts,
            sigmas,
            last,
            guidance,
            cfg.sampling.max_batch,
        )
        diff = forest.images.astype(np.float64) - clean.astype(np.float64)
        leftover.append(diff.reshape(len(diff), -1).std(axis=1))
        high.append(high_frequency_std(diff))
    with torch.no_grad():
        ode = ode_samples(
            policy,
            prompts,
            cfg.sampling.eval_steps,
            guidance,
            args.seed,
            cfg.sampling.max_batch,
            cfg.sampling.shift,
        )
    ode_scores = score_images(rewards, ode.images, prompts, texts, colors)
    names = list(rewards)
    spread = group_spread(scores, leaf_prompt, names)
    row = {"candidate": name, "guidance": guidance}
    for reward in names:
        row[f"{reward}_mean"] = scores[reward].mean()
        row[f"{reward}_group_std"] = spread[f"{reward}_group_std"]
        row[f"{reward}_leaf_minus_ode"] = scores[reward].mean() - ode_scores[reward].mean()
    row["color_groups_with_spread"] = spread.get("color_groups_with_spread", float("nan"))
    row["noise_leaves_255"] = pixel_noise(images)
    row["noise_ode_255"] = pixel_noise(ode.images)
    row["divergence_255"] = float(np.concatenate(leftover).mean())
    row["divergence_hf_255"] = float(np.concatenate(high).mean())
    stds = scores.assign(group=leaf_prompt).groupby("group")[names].std(ddof=0)
    for reward in names:
        row[f"{reward}_group_std_p25"], row[f"{reward}_group_std_p50"] = stds[reward].quantile([0.25, 0.5])
        # Groups whose reward does not vary get z = 0 whatever the floor; the floor acts on the rest.
        row[f"{reward}_varying_std_p25"] = stds[reward][stds[reward] > 0].quantile(0.25)
    row["seconds_per_leaf"] = statistics.median(seconds)
    row["nfe_per_leaf"] = steps * (1 if guidance == 1 else 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--batch-prompts", type=int, default=8)
    parser.add_argument("--guidances", default="1,4")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-base", action="store_true", help="no ODE test figures of the base model")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load(read_yaml(args.config), source=str(args.config))
    base = Path("results") / cfg.study / "base_model" / "model"
    if not base.is_dir():
        raise SystemExit(f"{base}: no base model; run `snakemake -c2 {base}/model.safetensors` first")
    policy = load_policy("mini", base, trainable=False)
    rewards = build_rewards(list(cfg.rewards.score), cfg.rewards.sections)
    test = pd.read_parquet(Path("datasets") / cfg.dataset.name / "test.parquet")
    guidances = [float(g) for g in args.guidances.split(",")]
    rows = [
        candidate_row(policy, rewards, test.iloc[: args.prompts], cfg, name, guidance, args)
        for guidance in guidances
        for name in args.candidates.split(",")
    ]
    pd.set_option("display.width", 250)
    print(pd.DataFrame(rows).round(4).to_string(index=False))
    base_rows = []
    for guidance in [] if args.skip_base else guidances:
        with torch.no_grad():
            ode = ode_samples(
                policy,
                list(test.prompt),
                cfg.sampling.eval_steps,
                guidance,
                0,
                cfg.sampling.max_batch,
                cfg.sampling.shift,
            )
        scores = score_images(rewards, ode.images, list(test.prompt), list(test.text), list(test.color))
        base_rows.append({"guidance": guidance, "prompts": len(test)} | scores.mean().round(4).to_dict())
    if base_rows:
        print("\nbase model, ODE test split at the evaluation's steps:")
        print(pd.DataFrame(base_rows).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
