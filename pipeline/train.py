"""Stage ``train``: GRPO fine-tuning of the base model with one method of the comparison.

    python -m pipeline.train --method multi_grpo --train train.parquet --base-model DIR \
        --config-json '{"train": ..., "method": ..., "sampling": ..., "rewards": ..., "model": ...}' \
        --out-dir DIR

Per iteration: sample a forest for a few training prompts (the method's tree schedule),
score the leaves with the reward registry in process, compute the method's advantages and
update the policy (:mod:`pipeline.rl.trainer`). Writes ``metrics.parquet`` (one row per
iteration: every reward's mean and std, advantage statistics, zero-variance share, clip
fraction, ratio mean, KL, loss, cumulative NFE, wall time), ``probe.parquet`` (rewards of a
fixed prompt batch, ODE-sampled every ``probe_every`` iterations; empty when probing is off),
``weights.safetensors`` (the
trained parameters: LoRA adapter or denoiser) and ``train_info.json``.

A checkpoint is written every ``checkpoint_every`` iterations; a rerun after an interruption
(kill -9 included) resumes from it and finishes the configured iterations. A NaN or infinite
loss stops the job with an error and leaves the last good checkpoint in place.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from safetensors.torch import save_file

from pipeline import io, tracking
from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.config import MethodConfig, RewardsConfig, SamplingConfig, TrainConfig, config_hash
from pipeline.models import load_policy
from pipeline.models.policy import trainable_state
from pipeline.rewards import build_rewards
from pipeline.rl.ema import Ema
from pipeline.rl.trainer import LoopSettings, MethodSpec, probe, probe_batch, run_iteration
from pipeline.sampling.schedule import TreeSchedule


def method_spec(method: MethodConfig, steps: int) -> MethodSpec:
    schedule = TreeSchedule(
        num_steps=steps,
        roots=method.roots,
        branch_steps=tuple(method.branch_steps),
        branch_factors=tuple(method.branch_factors),
        between=method.between,
    )
    return MethodSpec(schedule, method.mixing, method.std_mode, method.renormalize, method.aggregate)


def loop_settings(train: TrainConfig, sampling: SamplingConfig) -> LoopSettings:
    return LoopSettings(
        prompts_per_iteration=train.prompts_per_iteration,
        clip_range=train.clip_range,
        beta=train.beta,
        max_grad_norm=train.max_grad_norm,
        optimizer_steps_per_iteration=train.optimizer_steps_per_iteration,
        microbatch=train.microbatch,
        guidance=train.guidance,
        noise_level=sampling.noise_level,
        sde_type=sampling.sde_type,
        shift=sampling.shift,
        max_batch=sampling.max_batch,
        train_last_step=train.train_last_step,
        seed=train.seed,
        reward_weights=dict(train.reward_weights),
    )


def trainable_weights(policy) -> dict[str, torch.Tensor]:
    return {name: param.detach() for name, param in trainable_state(policy)}


def load_trainable_weights(policy, weights: dict[str, torch.Tensor]) -> None:
    params = dict(policy.module.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def train(policy, train_split: pd.DataFrame, raw: dict, out_dir: Path, run) -> dict:
    cfg, sampling = TrainConfig(**raw["train"]), SamplingConfig(**raw["sampling"])
    method = method_spec(MethodConfig(**raw["method"]), sampling.train_steps)
    settings = loop_settings(cfg, sampling)
    names = [n for n in settings.reward_weights if settings.reward_weights[n] != 0]
    rewards = build_rewards(names, RewardsConfig().settings() | raw["rewards"])
    parameters = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = Ema(parameters, cfg.ema_decay) if cfg.ema_decay > 0 else None
    checkpoint_dir, stage_hash = out_dir / "checkpoint", config_hash(raw)
    start, history, probes, elapsed = 0, [], [], 0.0
    restored = load_checkpoint(checkpoint_dir, optimizer)
    if restored is not None and restored[1].get("config_hash") == stage_hash:
        weights, state = restored
        load_trainable_weights(policy, {k: v for k, v in weights.items() if not k.startswith("ema.")})
        if ema is not None:
            ema.shadow = [weights[f"ema.{i}"] for i in range(len(ema.shadow))]
        start, history, elapsed = state["iteration"], state["history"], state["elapsed_s"]
        probes = state["probes"]
        print(f"resuming at iteration {start}")
    elif restored is not None:
        print("checkpoint from another config: starting afresh")
        optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    began = time.perf_counter() - elapsed
    cumulative = history[-1]["nfe_cumulative"] if history else 0
    probe_prompts = probe_batch(train_split, cfg.probe_prompts, cfg.seed) if cfg.probe_prompts else None

    def probe_now(updates: int) -> None:
        """Score the probe batch after ``updates`` iterations (once per count, resume-safe)."""
        if probe_prompts is None or any(row["iteration"] == updates for row in probes):
            return
        row = probe(policy, rewards, probe_prompts, settings, sampling.train_steps)
        probes.append(row | {"iteration": updates, "nfe_cumulative": cumulative})
        run.log_metrics({f"probe_{k}": v for k, v in row.items()}, step=updates)
        print(json.dumps({"probe_after": updates} | {k: round(v, 4) for k, v in row.items()}))

    for iteration in range(start, cfg.iterations):
        if time.perf_counter() - began > 60 * cfg.max_minutes:
            print(f"time budget of {cfg.max_minutes} min reached after {iteration} iterations")
            break
        if iteration % cfg.probe_every == 0:
            probe_now(iteration)
        try:
            row = run_iteration(policy, optimizer, rewards, train_split, method, settings, iteration, ema)
        except FloatingPointError as error:
            raise SystemExit(
                f"iteration {iteration}: {error}; the last good checkpoint is kept in {checkpoint_dir}"
            ) from error
        cumulative += row["nfe_sampling"] + row.get("nfe_training", 0)
        row |= {"nfe_cumulative": cumulative, "wall_s": time.perf_counter() - began}
        history.append(row)
        run.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=iteration)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        if (iteration + 1) % cfg.checkpoint_every == 0 or iteration + 1 == cfg.iterations:
            weights = trainable_weights(policy)
            if ema is not None:
                weights |= {f"ema.{i}": t for i, t in enumerate(ema.shadow)}
            save_checkpoint(
                checkpoint_dir,
                weights,
                optimizer,
                {
                    "iteration": iteration + 1,
                    "history": history,
                    "probes": probes,
                    "elapsed_s": time.perf_counter() - began,
                    "config_hash": stage_hash,
                },
            )
    if ema is not None:
        ema.copy_to_parameters()
    probe_now(len(history))
    return {
        "iterations": len(history),
        "train_seconds": round(time.perf_counter() - began, 1),
        "nfe_cumulative": cumulative,
        "history": history,
        "probes": probes,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="method name (for records)")
    parser.add_argument("--train", type=Path, required=True, help="curated train split (Parquet)")
    parser.add_argument("--base-model", type=Path, required=True, help="base model folder")
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.train.is_file():
        raise SystemExit(f"--train {args.train}: no such file")
    model, cfg = raw["model"], TrainConfig(**raw["train"])
    torch.manual_seed(cfg.seed)
    policy = load_policy(
        model["backend"],
        args.base_model,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        resolution=model["resolution"],
        dtype=model["dtype"],
        device=args.device,
    )
    with tracking.stage_run(args, raw) as run:
        info = train(policy, pd.read_parquet(args.train), raw, args.out_dir, run)
        for name, rows in (("metrics", info.pop("history")), ("probe", info.pop("probes"))):
            table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
            io.write_parquet(args.out_dir / f"{name}.parquet", table)
        with io.atomic_path(args.out_dir / "weights.safetensors") as tmp:
            save_file({k: v.contiguous().cpu() for k, v in trainable_weights(policy).items()}, tmp)
        io.write_json(args.out_dir / "train_info.json", info | {"method": args.method})
    print(f"{args.method}: {info['iterations']} iterations in {info['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
