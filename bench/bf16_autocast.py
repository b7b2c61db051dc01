"""Does bf16 autocast of the mini denoiser pay on this CPU, and does it keep GRPO on-policy?

    .venv/bin/python bench/bf16_autocast.py [--base-model DIR] [--threads 1,2] [--batch 64] \
        [--repeats 7] [--iterations 3] [--ratio-prompts 16]

Three measurements, float32 (today's path, ``train.mixed_precision: "no"``) against bf16
autocast (``"bf16"``), timed alternately in the same run, medians:

1. **The denoiser alone**: milliseconds per row of the forward pass and of forward plus
   backward, at ``--batch`` rows of real rollout edges, per torch thread count; and the
   relative error of the bf16 velocity against float32 (``|v_bf16 - v_fp32| / |v_fp32|``,
   norms over the batch).
2. **On-policy ratios**: forests sampled as training samples them (config.yaml's flow_grpo,
   ``sampling.max_batch`` rows per forward), then every trained edge's log-probability
   recomputed as the loss computes it, at ``train.microbatch`` rows and at 8, before any
   update. Exact arithmetic gives ratio 1; prints the largest ``|ratio - 1|`` and the share
   of edges beyond ``train.clip_range`` (there the clipped objective has no gradient).
3. **Whole iterations** (:func:`pipeline.rl.trainer.run_iteration`, config.yaml's train
   settings, flow_grpo, the reward worker pool): seconds per iteration, the clip fraction
   the loss reports and the rollouts' mixed reward.

``lscpu``'s bf16 flags are printed first: the gain depends on AMX (``amx_bf16``) or
AVX-512 BF16 (``avx512_bf16``) kernels. The base model defaults to the default study's
(``results/mini_ocr_color/base_model/model``), else a randomly initialised one.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.iteration_throughput import base_model_dir, timed_iteration, train_split  # noqa: E402
from pipeline.config.files import read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.models.backends import load_policy  # noqa: E402
from pipeline.rewards import build_rewards  # noqa: E402
from pipeline.rewards.scoring import LeafScorer  # noqa: E402
from pipeline.rl import rollouts, update  # noqa: E402
from pipeline.rl.settings import loop_settings, method_spec  # noqa: E402
from pipeline.sampling.tree import guided_velocity  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STUDY_BASE = REPO / "results" / "mini_ocr_color" / "base_model" / "model"
PRECISIONS = ("no", "bf16")


def cpu_bf16_flags() -> str:
    flags = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.split()
    found = sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16", "amx_tile")})
    return ", ".join(found) or "none"


def trained_edge_ids(rollout, num_steps: int) -> torch.Tensor:
    """``[E']``: every edge the loss may train (stochastic, not the last step), before any
    subsampling and whatever its advantage."""
    return update.trained_edges(rollout, torch.ones(len(rollout.edge_step)), num_steps, False)


def denoiser_timing(policy, rollout, settings, batch: int, threads: list[int], repeats: int) -> None:
    """Milliseconds per row of the denoiser at ``batch`` rows (the forest's first trained
    edges), float32 against bf16 autocast, per thread count."""
    edges = trained_edge_ids(rollout, int(rollout.edge_step.max()) + 1)[:batch]
    x, sigma = rollout.latents[edges], rollout.sigma[edges]
    cond, uncond = policy.encode(rollout.prompts)
    c, u = cond.select(rollout.edge_prompt[edges]), uncond.select(rollout.edge_prompt[edges])

    def forward(precision: str, grad: bool) -> torch.Tensor:
        precise = dataclasses.replace(settings, mixed_precision=precision)
        context = rollouts.denoiser_precision(policy, precise)
        with torch.set_grad_enabled(grad), context:
            v, _ = guided_velocity(policy, x, sigma, c, u, 1.0, len(x))
        if grad:
            v.float().square().mean().backward()
            policy.module.zero_grad(set_to_none=True)
        return v.detach().float()

    v32, v16 = forward("no", False), forward("bf16", False)
    error = float((v16 - v32).norm() / v32.norm())
    print(f"denoiser, {len(x)} rows of rollout edges; bf16 relative velocity error {error:.4f}")
    for count in threads:
        torch.set_num_threads(count)
        for grad, label in ((False, "forward"), (True, "forward+backward")):
            times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
            for precision in PRECISIONS:
                forward(precision, grad)  # warm-up: kernels chosen, memory allocated
            for _ in range(repeats):
                for precision in PRECISIONS:
                    began = time.perf_counter()
                    forward(precision, grad)
                    times[precision].append((time.perf_counter() - began) * 1000 / len(x))
            fp32, bf16 = (statistics.median(times[p]) for p in PRECISIONS)
            print(
                f"  {count} thread(s) {label:16s} float32 {fp32:6.2f} ms/row  bf16 {bf16:6.2f} ms/row  "
                f"speed-up {fp32 / bf16:.2f}x"
            )


def ratio_check(policy, rollout, settings, microbatches: list[int], precision: str) -> None:
    """Largest |ratio - 1| and the share beyond the clip range, per loss microbatch size."""
    edges = trained_edge_ids(rollout, int(rollout.edge_step.max()) + 1)
    cond, uncond = policy.encode(rollout.prompts)
    for microbatch in microbatches:
        deviations = []
        with torch.no_grad():
            for start in range(0, len(edges), microbatch):
                index = edges[start : start + microbatch]
                step, _ = update.edge_transitions(policy, rollout, index, cond, uncond, settings)
                deviations.append((step.log_prob - rollout.log_prob[index]).exp().sub(1).abs())
        deviation = torch.cat(deviations)
        beyond = float((deviation > settings.clip_range).float().mean())
        print(
            f"  rollouts {precision:4s} at {settings.max_batch} rows, loss at {microbatch:3d} rows: "
            f"max |ratio - 1| {float(deviation.max()):.2e}, median {float(deviation.median()):.2e}, "
            f"beyond clip {settings.clip_range:g}: {beyond:.1%} of {len(deviation)} edges"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-model", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=REPO / "config.yaml")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--iterations", type=int, default=3, help="whole iterations per precision")
    parser.add_argument("--ratio-prompts", type=int, default=16)
    args = parser.parse_args(argv)
    cfg = load(read_yaml(args.config), str(args.config), check_paths=False)
    threads = [int(n) for n in args.threads.split(",")]
    split = train_split(cfg)
    method = method_spec(cfg.methods["flow_grpo"], cfg.sampling.train_steps, cfg.train.sde_steps)
    base = loop_settings(cfg.train, dataclasses.asdict(cfg.sampling))
    settings = {p: dataclasses.replace(base, mixed_precision=p) for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.base_model or (STUDY_BASE if STUDY_BASE.is_dir() else None)
        policy = load_policy("mini", model_dir or base_model_dir(cfg, Path(tmp) / "mini"), device="cpu")
    print(f"CPU bf16 flags: {cpu_bf16_flags()}; base model {model_dir or 'random init'}")
    initial = {k: v.clone() for k, v in policy.module.state_dict().items()}

    prompts = list(split.prompt[: args.ratio_prompts])
    rollouts = {}
    for precision in PRECISIONS:
        with torch.no_grad():
            rollouts[precision] = rollouts.sample_prompts(policy, prompts, 0, method, settings[precision], 0)
    torch.set_num_threads(max(threads))
    print(
        f"on-policy ratios, {len(prompts)} prompts x {method.schedule.leaves_per_prompt} leaves, no update:"
    )
    for precision in PRECISIONS:
        microbatches = sorted({cfg.train.microbatch, 8}, reverse=True)
        ratio_check(policy, rollouts[precision], settings[precision], microbatches, precision)

    denoiser_timing(policy, rollouts["no"], base, args.batch, threads, args.repeats)

    if args.iterations > 0:
        whole_iterations(cfg, policy, initial, split, method, settings, args.iterations, max(threads))
    return 0


def whole_iterations(cfg, policy, initial, split, method, settings, iterations: int, threads: int) -> None:
    """Seconds per training iteration from the same weights, the precisions alternating."""
    base = settings["no"]
    names = [n for n, w in cfg.train.reward_weights.items() if w != 0]
    rewards = build_rewards(names, cfg.rewards.sections)
    scorer = LeafScorer(rewards, cfg.train.score_workers, cfg.rewards.sections)
    torch.set_num_threads(threads)
    images = base.prompts_per_iteration * method.schedule.leaves_per_prompt
    try:
        rows: dict[str, list[dict]] = {p: [] for p in PRECISIONS}
        timed_iteration("current", policy, initial, rewards, scorer, split, method, base)  # warm-up
        for _ in range(iterations):
            for precision in PRECISIONS:
                began = time.perf_counter()
                row = timed_iteration(
                    "current", policy, initial, rewards, scorer, split, method, settings[precision]
                )
                rows[precision].append(row | {"seconds": time.perf_counter() - began})
    finally:
        scorer.close()
    print(f"whole iterations ({images} images, {threads} threads, median of {iterations}):")
    totals = {}
    for precision in PRECISIONS:
        totals[precision] = statistics.median(r["seconds"] for r in rows[precision])
        rollout_s = statistics.median(r["seconds_rollout"] for r in rows[precision])
        update_s = statistics.median(r["seconds_update"] for r in rows[precision])
        clip = statistics.median(r["clip_fraction"] for r in rows[precision])
        mixed = rows[precision][0]["reward_mixed"]
        print(
            f"  {'float32' if precision == 'no' else 'bf16':7s} {totals[precision]:6.1f} s (rollout "
            f"{rollout_s:.1f}, update {update_s:.1f}); clip fraction {clip:.3f}; mixed reward {mixed:.4f}"
        )
    print(f"  bf16 speed-up per iteration: {totals['no'] / totals['bf16']:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
