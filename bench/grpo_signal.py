"""How much of one GRPO iteration's update is signal, per CPU-second, for named designs.

    .venv/bin/python bench/grpo_signal.py --designs flat-today,flat-every16 [--iterations 8]
        [--setups mixed,brightness,null] [--set train.key=value ...] [--out FILE.csv]

A design is a method of the study config with overrides (``DESIGNS`` below; ``--list`` prints
them). For each design the bench draws ``--iterations`` independent iterations from the
default study's base model and train split (other prompts, other noise) and runs each through
the trainer's own phases (:func:`pipeline.rl.trainer.sample_and_score`, ``plan_edges`` and
``update``, with a recorder in place of the optimizer and no gradient clipping), so that every
setting of the design (tree, edge subsampling, reinvested prompts) acts as in training. Each
*setup* turns the same scored rollouts into one gradient per iteration:

- ``mixed``: the study's rewards with the design's mixing (``train.reward_weights`` or
  ``train.z_weights``);
- ``ocr``, ``color``, ``quality``: that reward alone;
- ``brightness``: the mean pixel / 255, a control that the model clearly learns;
- ``null``: the mixed setup with the rewards shuffled across the iteration's images, a control
  whose expected gradient is zero.

With ``g_b = mu + n_b`` (shared signal plus independent noise) it prints:

- ``rho``: the signal share ``|mu|^2 / E|g|^2``, estimated as the mean inner product of
  different iterations' gradients over their mean squared norm (unbiased numerator: the null
  reads zero in expectation, where a mean cosine cannot go negative);
- ``rho_adam``: the same for the update Adam would take, each coordinate divided by the root
  mean square of the iterations' gradients there (:func:`pair_products`): signal in few
  parameters, which Adam's scaling picks out;
- ``SE``: jackknife standard errors over iterations (pairs share iterations, so the pairs are
  not independent; the old per-batch SE undercounted by about 1.6x at 6 iterations);
- ``s/it``: median seconds of one training iteration (rollout, decode, scoring, advantages and
  the mixed setup's backward pass), and ``SNR/ks``: ``rho / (1 - rho)`` (the signal-to-noise
  ratio of one iteration's update, additive over independent iterations) per 1000 seconds.

A design is only judged once the controls pass: brightness clearly positive, null within 2 SE
of zero.
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

from pipeline import config, stage_params  # noqa: E402
from pipeline.config import TRAIN_RUNTIME_KEYS  # noqa: E402
from pipeline.evaluation import LeafScorer  # noqa: E402
from pipeline.models.backends import load_policy  # noqa: E402
from pipeline.rewards import build_rewards  # noqa: E402
from pipeline.rl.trainer import PhaseTimer, plan_edges, sample_and_score, update  # noqa: E402
from pipeline.train import run_plan  # noqa: E402

# name -> (method, overrides). Flat designs are flow_grpo; tree designs use tree_grpo (the same
# mix-then-normalise advantages), so that a tree's difference to flat is its shape alone.
TREE = "tree_grpo"
DESIGNS: dict[str, tuple[str, list[str]]] = {
    "flat-today": ("flow_grpo", []),
    "flat-every16": ("flow_grpo", ["train.edge_fraction=1.0", "train.prompts_per_iteration=16"]),
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


def design_config(raw: dict, method: str, overrides: list[str]) -> tuple[config.StudyConfig, dict, dict]:
    """The study config after ``overrides``, and the train rule's config and runtime JSON of
    ``method`` at training seed 0."""
    cfg = config.load(overridden(raw, overrides), "bench", check_paths=False)
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


def measure(design: str, raw: dict, extra: list[str], args, rows: pd.DataFrame, base: Path) -> list[dict]:
    method_name, overrides = DESIGNS[design]
    cfg, params, runtime = design_config(raw, method_name, overrides + extra)
    _, method, settings = run_plan(params, runtime)
    # The raw gradient (no clipping: it would rescale iterations unevenly), one step per iteration.
    settings = dataclasses.replace(settings, max_grad_norm=math.inf, optimizer_steps_per_iteration=1)
    setups = args.setups.split(",")
    policy = load_policy("mini", base, device="cpu")
    recorders = {setup: GradientRecorder(policy.trainable_parameters()) for setup in setups}
    scorer = LeafScorer(build_rewards(list(BASE_REWARDS), cfg.rewards.settings()), 2, cfg.rewards.settings())
    seconds, nfe, trained = [], [], []
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
            nfe.append(scored.forest.nfe)
            print(f"  {design} iteration {index + 1}/{args.iterations}: {seconds[-1]:.1f} s", flush=True)
    finally:
        scorer.close()
    results = []
    per_iteration = statistics.median(seconds)
    for setup in setups:
        gradients = torch.stack(recorders[setup].gradients)
        rho, rho_se = jackknife(gradients, "raw")
        adam, adam_se = jackknife(gradients, "adam")
        results.append(
            {
                "design": design,
                "setup": setup,
                "prompts": settings.prompts_per_iteration,
                "leaves": settings.prompts_per_iteration * method.schedule.leaves_per_prompt,
                "nfe_sampling": int(statistics.median(nfe)),
                "trained_edges": int(statistics.median(trained)),
                "rho": rho,
                "rho_se": rho_se,
                "rho_adam": adam,
                "rho_adam_se": adam_se,
                "s_per_iteration": per_iteration,
                "snr_per_ks": 1000 * rho / (1 - rho) / per_iteration,
                "snr_adam_per_ks": 1000 * adam / (1 - adam) / per_iteration,
            }
        )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config.yaml")
    parser.add_argument("--designs", default="flat-today,flat-every16")
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--setups", default="mixed", help="mixed, null, brightness, ocr, color, quality")
    parser.add_argument("--set", action="append", default=[], help="key=value for every design")
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
    raw = config.read_yaml(args.config)
    cfg = config.load(raw, args.config, check_paths=False)
    base = Path(f"results/{cfg.study}/base_model/model")
    split = Path(f"datasets/{cfg.dataset.name}/train.parquet")
    if not base.is_dir() or not split.is_file():
        raise SystemExit(f"needs the study's base model ({base}) and train split ({split}): run snakemake")
    train_rows = pd.read_parquet(split)
    header = (
        f"{'design':22s} {'setup':10s} {'prompts':>7s} {'edges':>6s} {'NFE':>6s} {'rho':>8s} {'SE':>7s} "
        f"{'rho_adam':>8s} {'SE':>7s} {'s/it':>6s} {'SNR/ks':>7s} {'adam/ks':>7s}"
    )
    results = []
    for design in args.designs.split(","):
        rows = measure(design, config.read_yaml(args.config), args.set, args, train_rows, base)
        results += rows
        print(header)
        for r in results:
            print(
                f"{r['design']:22s} {r['setup']:10s} {r['prompts']:7d} {r['trained_edges']:6d} "
                f"{r['nfe_sampling']:6d} {r['rho']:8.4f} {r['rho_se']:7.4f} {r['rho_adam']:8.4f} "
                f"{r['rho_adam_se']:7.4f} {r['s_per_iteration']:6.1f} {r['snr_per_ks']:7.2f} "
                f"{r['snr_adam_per_ks']:7.2f}",
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
