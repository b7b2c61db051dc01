"""How much one GRPO iteration's update improves the reward, per CPU-second, for named designs.

    .venv/bin/python bench/grpo_signal.py --designs flat-today,flat-every [--iterations 6]
        [--setups mixed,brightness,null] [--set train.key=value ...] [--out FILE.csv]

A design is a method of the study config with overrides (``DESIGNS`` below; ``--list`` prints
them). For each design the bench draws ``--iterations`` independent iterations from the
default study's base model and train split (other prompts, other noise) and runs each through
the trainer's own phases (:func:`pipeline.rl.rollouts.sample_and_score`, ``plan_edges`` and
``update``, with a recorder in place of the optimizer and no gradient clipping), so that every
setting of the design (tree, edge subsampling, reinvested prompts) acts as in training. Each
*setup* turns the same scored rollouts into one gradient per iteration:

- ``mixed``: the study's rewards with the design's mixing (``train.reward_weights`` or
  ``train.z_weights``);
- ``ocr``, ``color``, ``quality``: that reward alone;
- ``brightness``: the mean pixel / 255, a control that the model clearly learns;
- ``null``: the mixed setup with the rewards shuffled across the iteration's images, a control
  whose expected update improves nothing.

**The yardstick: the probe gain of one step** (``D``). Each iteration's gradient ``g`` gives
the step AdamW takes first, ``-lr * sign(g)`` on every weight (``--step``, default
``train.learning_rate``); the bench evaluates the fixed probe batch (``--probe-prompts`` train
prompts, one ODE sample each with fixed noise, at the evaluation's steps and guidance: common
random numbers) at ``theta - step sign(g)`` and ``theta + step sign(g)`` and takes half the
difference of each reward's mean. The central
difference cancels every even-order term, so a direction unrelated to the reward reads zero in
expectation whatever the curvature (the null control), and the same probe serves every
design. Per setup it prints the mean ``D`` of its own objective over the iterations with its
standard error, ``t`` (their ratio), the signal-to-noise ratio of one iteration's step
``(mean D / SD D)^2`` per 1000 seconds of training iteration (``SNR/ks``: information per
CPU-second, additive over iterations), and for the mixed setup each reward's ``D``.

It also prints the gradient's signal share ``rho`` (the mean inner product of different
iterations' gradients over their mean squared norm, ``|mu|^2 / E|g|^2``, with a jackknife SE):
on the mini model it reads zero within about 0.04 for every setup, the brightness control
included, so it cannot judge designs (docs/results.md). Seconds per iteration (``s/it``, the
median) count the rollout, decode, scoring, advantages and the first setup's backward pass,
not the probes.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from learning_settings import overridden  # noqa: E402

from pipeline.config.files import read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.config.types import (
    TRAIN_RUNTIME_KEYS,  # noqa: E402
    StudyConfig,  # noqa: E402
)
from pipeline.models.backends import load_policy  # noqa: E402
from pipeline.rewards import build_rewards  # noqa: E402
from pipeline.rewards.base import Reward, RewardOutput  # noqa: E402
from pipeline.rewards.scoring import LeafScorer  # noqa: E402
from pipeline.rl.rollouts import PhaseTimer, probe, probe_batch, sample_and_score  # noqa: E402
from pipeline.rl.settings import run_plan  # noqa: E402
from pipeline.rl.update import plan_edges, update  # noqa: E402
from pipeline.workflow import stage_params  # noqa: E402

# name -> (method, overrides). Flat designs are flow_grpo; tree designs use tree_grpo (the same
# mix-then-normalise advantages), so that a tree's difference to flat is its shape alone.
TREE = "tree_grpo"
DESIGNS: dict[str, tuple[str, list[str]]] = {
    "flat-today": ("flow_grpo", []),
    "flat-every16": ("flow_grpo", ["train.edge_fraction=1.0", "train.prompts_per_iteration=16"]),
    # Only step 0 stochastic and trained: the flat counterpart of a tree that splits at step 0
    # with deterministic steps after it (run_methods: the window must hold every method's branches).
    "flat-step0": ("flow_grpo", ["run_methods=[flow_grpo]", "train.sde_steps=1", "train.edge_fraction=1.0"]),
    "flat-half24": ("flow_grpo", ["train.edge_fraction=0.5", "train.prompts_per_iteration=24"]),
    "tree-today": (TREE, []),
    "tree-today-weighted": (TREE, ["train.edge_sampling=weighted"]),
    "tree-today-every": (TREE, ["train.edge_fraction=1.0", "train.prompts_per_iteration=16"]),
    "tree-today-ode": (TREE, ["methods.tree_grpo.between=ode", "train.edge_fraction=1.0"]),
    "branch-1r-012": (
        TREE,
        [
            "methods.tree_grpo.roots=1",
            "methods.tree_grpo.branch_steps=[0,1,2]",
            "methods.tree_grpo.branch_factors=[2,2,2]",
            "train.edge_fraction=1.0",
            "train.prompts_per_iteration=16",
        ],
    ),
    "branch-1r-012-ode": (
        TREE,
        [
            "methods.tree_grpo.roots=1",
            "methods.tree_grpo.branch_steps=[0,1,2]",
            "methods.tree_grpo.branch_factors=[2,2,2]",
            "methods.tree_grpo.between=ode",
            "train.edge_fraction=1.0",
        ],
    ),
    "split-2r-0x4": (
        TREE,
        [
            "methods.tree_grpo.branch_steps=[0]",
            "methods.tree_grpo.branch_factors=[4]",
            "train.edge_fraction=1.0",
            "train.prompts_per_iteration=16",
        ],
    ),
    "split-2r-0x4-ode": (
        TREE,
        [
            "methods.tree_grpo.branch_steps=[0]",
            "methods.tree_grpo.branch_factors=[4]",
            "methods.tree_grpo.between=ode",
            "train.edge_fraction=1.0",
        ],
    ),
    "paper-2r-2x3": (
        TREE,
        [
            "methods.tree_grpo.branch_steps=[0,2]",
            "methods.tree_grpo.branch_factors=[2,3]",
            "train.edge_fraction=1.0",
            "train.prompts_per_iteration=12",
        ],
    ),
    "paper-2r-2x3-ode": (
        TREE,
        [
            "methods.tree_grpo.branch_steps=[0,2]",
            "methods.tree_grpo.branch_factors=[2,3]",
            "methods.tree_grpo.between=ode",
            "train.edge_fraction=1.0",
        ],
    ),
}
BASE_REWARDS = ("ocr", "color", "quality")


class Brightness(Reward):
    """Mean pixel value / 255 (a control reward the model clearly learns)."""

    name = "brightness"
    label = "brightness"

    def score(self, images, prompts, metadata):
        return RewardOutput(np.array([np.asarray(i, dtype=np.float32).mean() / 255 for i in images]))


class GradientRecorder:
    """Stands in for the optimizer: keeps each step's gradient (float32 ``[D]``), applies none."""

    def __init__(self, parameters):
        self.parameters = list(parameters)
        self.gradients: list[torch.Tensor] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters:
            p.grad = None

    def step(self) -> None:
        flat = [p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in self.parameters]
        self.gradients.append(torch.cat(flat).clone())


def pair_products(gradients: torch.Tensor, metric: str) -> torch.Tensor:
    """``[B, B]`` inner products of the rows of ``gradients`` ``[B, D]``.

    ``raw``: ``<g_i, g_j>``. ``adam``: ``<u_i, u_j>`` with ``u = g / sqrt(v)``, ``v`` the mean
    square of the ``B`` rows at each coordinate (coordinates where it is 0 left out): the
    direction of Adam's update, whose second moments include the step's own gradient. Every
    term is bounded (``|u_i u_j| <= B / 2``); with second moments from the *other* rows only,
    a coordinate where they happen to be small blows the product up (infinite variance for
    fewer than 6 other rows). A zero-mean gradient whose sign is as likely flipped reads zero.
    """
    if metric not in ("raw", "adam"):
        raise ValueError(f"metric {metric!r}: expected 'raw' or 'adam'")
    g = gradients.double()
    if metric == "adam":
        v = (g**2).mean(dim=0)
        g = torch.where(v > 0, g / v.sqrt().clamp(min=1e-300), torch.zeros_like(g))
    return g @ g.T


def signal_share(products: torch.Tensor) -> float:
    """``mean_{i != j} P_ij / mean_i P_ii`` of a ``[B, B]`` product matrix: ``|mu|^2 / E|g|^2``."""
    count = len(products)
    diagonal = products.diagonal()
    off = (products.sum() - diagonal.sum()) / (count * (count - 1))
    return float(off / diagonal.mean())


def jackknife(gradients: torch.Tensor, metric: str) -> tuple[float, float]:
    """The signal share of ``gradients`` ``[B, D]`` and its jackknife SE over the ``B`` rows."""
    estimate = signal_share(pair_products(gradients, metric))
    count = len(gradients)
    leave_out = [
        signal_share(pair_products(gradients[[k for k in range(count) if k != left]], metric))
        for left in range(count)
    ]
    spread = sum((value - statistics.fmean(leave_out)) ** 2 for value in leave_out)
    return estimate, math.sqrt((count - 1) / count * spread)


def probe_gain(policy, gradient: torch.Tensor, step: float, measure) -> dict[str, float]:
    """Half the difference of ``measure()`` (a dict of probe means) between the weights moved by
    ``-step * sign(gradient)`` (the way AdamW's first step goes: down the loss's gradient) and by
    ``+step * sign(gradient)``; ``gradient`` ``[D]`` is flat over the trainable parameters in
    their order. The weights are restored afterwards."""
    parameters = list(policy.trainable_parameters())
    original = [p.detach().clone() for p in parameters]
    direction = torch.sign(gradient)
    sides = []
    try:
        for sign in (-1.0, 1.0):
            offset = 0
            with torch.no_grad():
                for p, start in zip(parameters, original, strict=True):
                    count = p.numel()
                    p.copy_(start + sign * step * direction[offset : offset + count].view_as(p))
                    offset += count
            sides.append(measure())
    finally:
        with torch.no_grad():
            for p, start in zip(parameters, original, strict=True):
                p.copy_(start)
    return {key: (sides[0][key] - sides[1][key]) / 2 for key in sides[0]}


def design_config(
    raw: dict, method: str, overrides: list[str], scale: float = 1.0
) -> tuple[StudyConfig, dict, dict]:
    """The study config after ``overrides`` with its prompts per iteration times ``scale``, and
    the train rule's config and runtime JSON of ``method`` at training seed 0."""
    raw = overridden(raw, overrides)
    prompts = raw.setdefault("train", {}).get("prompts_per_iteration", 32)
    raw["train"]["prompts_per_iteration"] = max(1, round(prompts * scale))
    cfg = load(raw, "bench", check_paths=False)
    params = stage_params.train_params(cfg, method, 0)
    runtime = {key: getattr(cfg.train, key) for key in TRAIN_RUNTIME_KEYS}
    return cfg, params, runtime


def setup_rewards(setup: str, scores: pd.DataFrame, images: np.ndarray, rng: np.random.Generator):
    """``(leaf_rewards [L, M], names, weights)`` of one setup; ``weights`` None: the design's own."""
    if setup == "brightness":
        bright = images.reshape(len(images), -1).astype(np.float64).mean(axis=1) / 255
        return torch.tensor(bright, dtype=torch.float32)[:, None], ["brightness"], {"brightness": 1.0}
    mixed = torch.tensor(scores[list(BASE_REWARDS)].to_numpy(), dtype=torch.float32)
    if setup == "mixed":
        return mixed, list(BASE_REWARDS), None
    if setup == "null":
        return mixed[torch.from_numpy(rng.permutation(len(mixed)))], list(BASE_REWARDS), None
    if setup in BASE_REWARDS:
        return mixed[:, [BASE_REWARDS.index(setup)]], [setup], {setup: 1.0}
    known = ", ".join(["mixed", "null", "brightness", *BASE_REWARDS])
    raise SystemExit(f"--setups: unknown setup {setup!r} ({known})")


OBJECTIVE = {"mixed": "reward_mixed", "null": "reward_mixed", "brightness": "brightness_mean"}


def measure(design: str, raw: dict, args, rows: pd.DataFrame, base: Path) -> list[dict]:
    method_name, overrides = DESIGNS[design]
    cfg, params, runtime = design_config(raw, method_name, overrides + args.set, args.scale)
    _, method, settings = run_plan(params, runtime)
    # The raw gradient (no clipping: it would rescale iterations unevenly), one step per iteration.
    settings = dataclasses.replace(settings, max_grad_norm=math.inf, optimizer_steps_per_iteration=1)
    setups = args.setups.split(",")
    policy = load_policy("mini", base, device="cpu")
    recorders = {setup: GradientRecorder(policy.trainable_parameters()) for setup in setups}
    scorer = LeafScorer(build_rewards(list(BASE_REWARDS), cfg.rewards.sections), 2, cfg.rewards.sections)
    # The probe: fixed prompts and noise at the evaluation's sampler, every reward scored.
    probe_rewards = build_rewards(list(BASE_REWARDS), cfg.rewards.sections) | {"brightness": Brightness()}
    probe_prompts = probe_batch(rows, args.probe_prompts, 0)
    probe_settings = dataclasses.replace(settings, guidance=cfg.sampling.guidance)

    def measure_probe() -> dict[str, float]:
        return probe(policy, probe_rewards, probe_prompts, probe_settings, cfg.sampling.eval_steps)

    seconds, nfe, trained = [], [], []
    gains: dict[str, list[dict]] = {setup: [] for setup in setups}
    step = args.step if args.step is not None else cfg.train.learning_rate  # AdamW's first step
    try:
        for index in range(args.iterations):
            iteration = 1000 + index  # apart from a training run's draws (iterations 0, 1, ...)
            began, timer = time.perf_counter(), PhaseTimer(policy.device)
            scored = sample_and_score(policy, scorer, rows, method, settings, iteration, timer)
            rng = np.random.default_rng([index, 99])
            for setup in setups:
                leaf_rewards, names, weights = setup_rewards(setup, scored.scores, scored.images, rng)
                own = (
                    settings
                    if weights is None
                    else dataclasses.replace(settings, reward_weights=weights, z_weights=weights)
                )
                plan = plan_edges(scored.forest, leaf_rewards, names, method, own, iteration)
                update(
                    policy,
                    recorders[setup],
                    scored.rollout,
                    plan.advantages,
                    plan.edges,
                    own,
                    np.random.default_rng([0, iteration, 1]),
                    weights=plan.weights,
                )
                if setup == setups[0]:
                    seconds.append(time.perf_counter() - began)
                    trained.append(len(plan.edges))
                gains[setup].append(probe_gain(policy, recorders[setup].gradients[-1], step, measure_probe))
            nfe.append(scored.forest.nfe)
            shown = ", ".join(
                f"{setup} D {gains[setup][-1][OBJECTIVE.get(setup, setup + '_mean')]:+.4f}"
                for setup in setups
            )
            print(
                f"  {design} iteration {index + 1}/{args.iterations}: {seconds[-1]:.1f} s; {shown}",
                flush=True,
            )
    finally:
        scorer.close()
    results = []
    per_iteration = statistics.median(seconds)
    for setup in setups:
        gradients = torch.stack(recorders[setup].gradients)
        rho, rho_se = jackknife(gradients, "raw")
        table = pd.DataFrame(gains[setup])
        d = table[OBJECTIVE.get(setup, f"{setup}_mean")].to_numpy()
        mean, sd = float(d.mean()), float(d.std(ddof=1))
        row = {
            "design": design,
            "setup": setup,
            "prompts": settings.prompts_per_iteration,
            "leaves": settings.prompts_per_iteration * method.schedule.leaves_per_prompt,
            "nfe_sampling": int(statistics.median(nfe)),
            "trained_edges": int(statistics.median(trained)),
            "iterations": len(d),
            "gain": mean,
            "gain_se": sd / math.sqrt(len(d)),
            "t": mean / (sd / math.sqrt(len(d))) if sd > 0 else float("nan"),
            "s_per_iteration": per_iteration,
            "snr_per_ks": 1000 * (mean / sd) ** 2 / per_iteration if sd > 0 else float("nan"),
            "rho": rho,
            "rho_se": rho_se,
        }
        row |= {f"gain_{key}": float(table[key].mean()) for key in table.columns if key.endswith("_mean")}
        results.append(row)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--designs", default="flat-today,flat-every16")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--setups", default="mixed", help="mixed, null, brightness, ocr, color, quality")
    parser.add_argument("--set", action="append", default=[], help="key=value for every design")
    parser.add_argument("--scale", type=float, default=1.0, help="every design's prompts times this")
    parser.add_argument("--step", type=float, default=None, help="the probe's step on every weight (lr)")
    parser.add_argument("--probe-prompts", type=int, default=32, help="train prompts of the fixed probe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="append the rows to this CSV")
    parser.add_argument("--list", action="store_true", help="print the designs and exit")
    args = parser.parse_args()
    if args.list:
        for name, (method, overrides) in DESIGNS.items():
            print(f"{name:22s} {method:10s} {' '.join(overrides)}")
        return 0
    unknown = [d for d in args.designs.split(",") if d not in DESIGNS]
    if unknown:
        raise SystemExit(f"--designs: unknown {', '.join(unknown)} (--list shows them)")
    if args.iterations < 3:
        raise SystemExit(f"--iterations {args.iterations}: the jackknife needs at least 3")
    torch.set_num_threads(args.threads)
    raw = read_yaml(args.config)
    cfg = load(raw, args.config, check_paths=False)
    base = Path(f"results/{cfg.study}/base_model/model")
    split = Path(f"datasets/{cfg.dataset.name}/train.parquet")
    if not base.is_dir() or not split.is_file():
        raise SystemExit(f"needs the study's base model ({base}) and train split ({split}): run snakemake")
    train_rows = pd.read_parquet(split)
    header = (
        f"{'design':22s} {'setup':10s} {'prompts':>7s} {'edges':>6s} {'NFE':>6s} {'gain D':>8s} {'SE':>7s} "
        f"{'t':>6s} {'s/it':>6s} {'SNR/ks':>7s} {'rho':>7s} {'SE':>6s}"
    )
    results = []
    for design in args.designs.split(","):
        rows = measure(design, read_yaml(args.config), args, train_rows, base)
        results += rows
        print(header)
        for r in results:
            print(
                f"{r['design']:22s} {r['setup']:10s} {r['prompts']:7d} {r['trained_edges']:6d} "
                f"{r['nfe_sampling']:6d} {r['gain']:+8.4f} {r['gain_se']:7.4f} {r['t']:+6.2f} "
                f"{r['s_per_iteration']:6.1f} {r['snr_per_ks']:7.2f} {r['rho']:+7.4f} {r['rho_se']:6.4f}",
                flush=True,
            )
        if args.out is not None:
            new = not args.out.exists()
            with args.out.open("a", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                if new:
                    writer.writeheader()
                writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
