"""Stage ``train``: GRPO fine-tuning of the base model with one method of the comparison.

    python -m pipeline.train --method multi_grpo --train train.parquet --base-model DIR \
        --config-json '{"train": ..., "method": ..., "sampling": ..., "rewards": ..., "model": ...}' \
        --runtime-json '{"max_minutes": ..., "probe_steps": ..., ...}' --out-dir DIR [--nproc N]

``--config-json`` holds what decides the trained weights (pipeline.stage_params.train_params);
``--runtime-json`` the time guard, worker count, memory layout and probe settings, which do not
(train_runtime), so that changing them neither reruns the job nor invalidates its checkpoint.

Per iteration: sample a forest for a few training prompts (the method's tree schedule),
score the leaves with the reward registry in process, compute the method's advantages and
update the policy (:mod:`pipeline.rl.trainer`). Writes ``metrics.parquet`` (one row per
iteration: every reward's mean and std, advantage statistics, zero-variance share, clip
fraction, ratio mean, KL, loss, cumulative NFE, wall time), ``probe.parquet`` (rewards of a
fixed prompt batch, ODE-sampled every ``probe_every`` iterations; empty when probing is off),
``weights.safetensors`` (the
trained parameters: LoRA adapter or denoiser), ``snapshots/`` (the same weights after every
``checkpoint_every`` iterations, ``iteration_NNNN.safetensors``, for the equal-NFE
evaluation) and ``train_info.json``.

A checkpoint is written every ``checkpoint_every`` iterations; a rerun after an interruption
(kill -9 included) resumes from it and finishes the configured iterations. A NaN or infinite
loss stops the job with an error and leaves the last good checkpoint in place.

With ``--nproc N`` (N > 1) the command re-launches itself in N processes through torchrun,
one per GPU: each samples and trains its share of the prompts, advantages come from the
gathered batch and gradients are summed across processes, so an iteration computes what one
process computes on the whole batch (:mod:`pipeline.rl.distributed`). Only rank 0 logs,
probes and writes files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from safetensors.torch import save_file

from pipeline import io, tracking
from pipeline.checkpoint import (
    load_checkpoint,
    require_finite,
    restart_remedy,
    save_checkpoint,
    snapshot_files,
    snapshot_name,
)
from pipeline.config import TRAIN_RUNTIME_KEYS, MethodConfig, RewardsConfig, TrainConfig, config_hash
from pipeline.evaluation import LeafScorer
from pipeline.models.backends import backend_options, load_policy
from pipeline.models.policy import trainable_state
from pipeline.progress import Progress
from pipeline.rewards import build_rewards
from pipeline.rl import distributed
from pipeline.rl.distributed import SINGLE, Ranks
from pipeline.rl.ema import Ema, without_averages
from pipeline.rl.trainer import LoopSettings, MethodSpec, probe, probe_batch, run_iteration
from pipeline.sampling.schedule import TreeSchedule, equal_nfe_prompts, flow_sigmas, sde_mean_x_coefficient
from pipeline.sources import sources_digest
from pipeline.time_guard import TimeGuard


def method_spec(method: MethodConfig, steps: int, sde_steps: int = 0) -> MethodSpec:
    schedule = TreeSchedule(
        num_steps=steps,
        roots=method.roots,
        branch_steps=tuple(method.branch_steps),
        branch_factors=tuple(method.branch_factors),
        between=method.between,
        sde_steps=sde_steps,
    )
    return MethodSpec(
        schedule,
        method.mixing,
        method.std_mode,
        method.renormalize,
        method.aggregate,
        method.branch_noise_scale,
    )


def loop_settings(train: TrainConfig, sampling: dict) -> LoopSettings:
    """The trainer's settings from the train config and the rollout sampling keys
    (``train_steps``, ``noise_level``, ``sde_type``, ``shift``, ``max_batch``)."""
    return LoopSettings(
        prompts_per_iteration=train.prompts_per_iteration,
        clip_range=train.clip_range,
        beta=train.beta,
        max_grad_norm=train.max_grad_norm,
        optimizer_steps_per_iteration=train.optimizer_steps_per_iteration,
        microbatch=train.microbatch,
        guidance=train.guidance,
        noise_level=sampling["noise_level"],
        sde_type=sampling["sde_type"],
        shift=sampling["shift"],
        max_batch=sampling["max_batch"],
        train_last_step=train.train_last_step,
        edge_fraction=train.edge_fraction,
        edge_sampling=train.edge_sampling,
        seed=train.seed,
        reward_weights=dict(train.reward_weights),
        z_weights=train.advantage_z_weights(),
        std_floor=dict(train.std_floor),
        edge_weighting=train.edge_weighting,
        mixed_precision=train.mixed_precision,
        kl_units=train.kl_units,
        detach_uncond=train.detach_uncond,
    )


def trainable_weights(policy) -> dict[str, torch.Tensor]:
    return {name: param.detach() for name, param in trainable_state(policy)}


def load_trainable_weights(policy, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy ``weights`` (read from ``source``) into every trainable parameter of ``policy``; a
    file that lacks one, or holds a tensor of another name or shape, stops the job: a partial
    restore would train on, or save, weights the checkpoint never held."""
    trainable = dict(trainable_state(policy))
    missing, unknown = sorted(set(trainable) - set(weights)), sorted(set(weights) - set(trainable))
    remedy = restart_remedy(source.parent)
    if missing or unknown:
        problems = [f"{len(missing)} of {len(trainable)} trainable parameters missing"] if missing else []
        problems += [f"{len(unknown)} tensors that match no trainable parameter"] if unknown else []
        raise SystemExit(f"{source}: {'; '.join(problems)} (e.g. {(missing or unknown)[0]!r}); {remedy}")
    with torch.no_grad():
        for name, param in trainable.items():
            if param.shape != weights[name].shape:
                raise SystemExit(
                    f"{source}: {name!r} has shape {tuple(weights[name].shape)}, the model's is "
                    f"{tuple(param.shape)}; {remedy}"
                )
            param.copy_(weights[name])


def run_config(raw: dict, runtime: dict) -> TrainConfig:
    """The run's train config: the weight-deciding keys of ``raw`` and the run-time ones."""
    return TrainConfig(**raw["train"], **{key: runtime[key] for key in TRAIN_RUNTIME_KEYS})


def inverse_std_weights(spreads: dict, names: list[str], source: Path) -> dict[str, float]:
    """``{reward: 1 / its mean within-group std}`` from the base model's group spreads
    (``spreads``, the ``base_group_spreads`` stage's JSON read from ``source``): the weights that
    count each reward's spread once, as the report's B does. A reward with no spread gets weight
    0, as B leaves it out."""
    found = {name: float(spreads.get(f"{name}_group_std", 0.0)) for name in names}
    weights = {name: round(1.0 / std, 6) if std > 0 else 0.0 for name, std in found.items()}
    if not any(weights.values()):
        raise SystemExit(
            f"{source}: no trained reward ({', '.join(names)}) has a within-group spread at the base "
            "model, so inverse_std_weights leaves nothing to train"
        )
    return weights


def run_plan(
    raw: dict, runtime: dict, card: Path | None = None
) -> tuple[TrainConfig, MethodSpec, LoopSettings]:
    """The run's train config (with the method's own ``reward_weights`` where it states them,
    or with ``inverse_std_weights`` those of the base model's group spreads at ``card``), its method and
    the trainer's settings (with ``equal_sampling_nfe``, the prompts per iteration that give
    the method's rollouts a flat group's NFE)."""
    cfg, method_config = run_config(raw, runtime), MethodConfig(**raw["method"])
    if method_config.reward_weights is not None:
        cfg = dataclasses.replace(cfg, reward_weights=dict(method_config.reward_weights))
    if method_config.inverse_std_weights:
        if card is None or not card.is_file():
            raise SystemExit(f"inverse_std_weights needs the base model's group spreads (--card {card})")
        weights = inverse_std_weights(json.loads(card.read_text()), cfg.trained_rewards(), card)
        cfg = dataclasses.replace(cfg, reward_weights=weights)
    sampling = raw["sampling"]
    method = method_spec(method_config, sampling["train_steps"], cfg.sde_steps)
    settings = loop_settings(cfg, sampling)
    if cfg.equal_sampling_nfe:
        prompts = equal_nfe_prompts(cfg.prompts_per_iteration, method.schedule, cfg.gpus)
        settings = dataclasses.replace(settings, prompts_per_iteration=prompts)
    return cfg, method, settings


def check_branch_noise(method: MethodSpec, raw: dict) -> None:
    """Stop before any work when ``branch_noise_scale`` makes a branching step's Flow-SDE mean
    flip the sample's sign (:func:`pipeline.sampling.schedule.sde_mean_x_coefficient`)."""
    sampling, schedule = raw["sampling"], method.schedule
    if sampling["sde_type"] != "sde" or not schedule.branch_steps:
        return
    level = sampling["noise_level"] * method.branch_noise_scale
    coefficient = sde_mean_x_coefficient(flow_sigmas(schedule.num_steps, sampling["shift"]), level)
    bad = [step for step in schedule.branch_steps if coefficient[step] <= 0]
    if bad:
        raise SystemExit(
            f"method config key 'branch_noise_scale' ({method.branch_noise_scale}): at noise level "
            f"{level:g} the Flow-SDE mean of branch steps {bad} has coefficient "
            f"{float(coefficient[bad[0]]):.3f} <= 0 on x (it flips the sample); use a smaller scale"
        )


def scored_rewards(cfg: TrainConfig, raw: dict) -> list[str]:
    """The rewards the rollouts score: the trained ones and, under ``inverse_std_weights``, also
    those the card weighs 0 (no spread at the base), whose means still show the arm's progress."""
    zeroed = list(cfg.reward_weights) if raw["method"].get("inverse_std_weights") else []
    return list(dict.fromkeys([*cfg.trained_rewards(), *zeroed]))


def rollout_scorer(names: list[str], settings: dict, workers: int, device: torch.device) -> LeafScorer:
    """The rollouts' scorer: model rewards (PickScore) on the policy's ``device``, the
    per-image rewards (OCR, colour) in ``workers`` CPU processes."""
    reward_settings = RewardsConfig().settings() | settings
    return LeafScorer(build_rewards(names, reward_settings, device=str(device)), workers, reward_settings)


def train(
    policy,
    train_split: pd.DataFrame,
    raw: dict,
    runtime: dict,
    out_dir: Path,
    run,
    ranks: Ranks = SINGLE,
    card: Path | None = None,
) -> dict:
    """The training run; the rollout scorer (and its worker pool) lives as long as it."""
    plan = run_plan(raw, runtime, card)
    cfg = plan[0]
    scorer = rollout_scorer(scored_rewards(cfg, raw), raw["rewards"], cfg.score_workers, policy.device)
    try:
        return _train_loop(policy, train_split, raw, runtime, out_dir, run, ranks, scorer, plan)
    finally:
        scorer.close()


def _train_loop(
    policy,
    train_split: pd.DataFrame,
    raw: dict,
    runtime: dict,
    out_dir: Path,
    run,
    ranks: Ranks,
    scorer: LeafScorer,
    plan: tuple[TrainConfig, MethodSpec, LoopSettings],
) -> dict:
    cfg, method, settings = plan
    parameters = policy.trainable_parameters()
    distributed.broadcast_parameters(parameters, ranks)  # before the EMA copies them
    optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = Ema(parameters, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    # A checkpoint resumes only under the same weight-deciding config and the same code.
    checkpoint_dir = out_dir / "checkpoint"
    stage_hash = config_hash({"config": raw, "code": sources_digest("pipeline.train")})
    start, history, probes, elapsed = 0, [], [], 0.0
    restored = load_checkpoint(checkpoint_dir, optimizer, stage_hash, counter="iteration")
    if restored is not None:
        weights, state = restored
        load_trainable_weights(policy, without_averages(weights), checkpoint_dir / "weights.safetensors")
        if ema is not None:
            ema.restore(weights)
        start, history, elapsed = state["iteration"], state["history"], state["elapsed_s"]
        probes = state["probes"]
        if ranks.is_main:
            print(f"resuming at iteration {start}")
    elif checkpoint_dir.exists() and ranks.is_main:
        print("checkpoint from another config or code: starting afresh")
    if ranks.is_main:
        drop_snapshots_after(snapshot_store(checkpoint_dir), start)
    began = time.perf_counter() - elapsed
    guard = TimeGuard(cfg.max_minutes, cfg.on_time_limit, "train.max_minutes")
    cumulative = history[-1]["nfe_cumulative"] if history else 0
    # Rank 0 probes alone (the others wait for it at the next collective).
    probing = cfg.probe_prompts > 0 and ranks.is_main
    probe_prompts = probe_batch(train_split, cfg.probe_prompts, cfg.seed) if probing else None
    # The probe previews the test split: the evaluation's steps and (by default) guidance.
    probe_settings = dataclasses.replace(settings, guidance=runtime["probe_guidance"])

    def probe_now(updates: int) -> None:
        """Score the probe batch after ``updates`` iterations (once per count, resume-safe)."""
        if probe_prompts is None or any(row["iteration"] == updates for row in probes):
            return
        row = probe(policy, scorer.rewards, probe_prompts, probe_settings, runtime["probe_steps"])
        probes.append(row | {"iteration": updates, "nfe_cumulative": cumulative})
        run.log_metrics({f"probe_{k}": v for k, v in row.items()}, step=updates)
        print(json.dumps({"probe_after": updates} | {k: round(v, 4) for k, v in row.items()}))

    def checkpoint(done: int) -> None:
        """Checkpoint after ``done`` iterations (rank 0 writes; every rank leaves with it complete)."""
        if ranks.is_main:
            weights = trainable_weights(policy)
            if ema is not None:
                weights |= ema.checkpoint_tensors()
            state = {"iteration": done, "history": history, "probes": probes, "config_hash": stage_hash}
            state["elapsed_s"] = time.perf_counter() - began
            # The snapshot first: a kill between the two resumes before it and writes it again.
            save_weights(snapshot_store(checkpoint_dir) / snapshot_name(done), result_weights(policy, ema))
            save_checkpoint(checkpoint_dir, weights, optimizer, state)
        distributed.barrier(ranks)

    progress = Progress("train", cfg.iterations, "iteration", done=start) if ranks.is_main else None
    for iteration in range(start, cfg.iterations):
        if distributed.agree(guard.would_exceed(), ranks):  # every rank stops, or none
            if iteration > start and iteration % cfg.checkpoint_every:
                checkpoint(iteration)  # a rerun after the guard resumes here
            message = guard.trip(iteration, cfg.iterations, "iterations")
            if ranks.is_main:
                print(message)
            break
        guard.start_unit()
        if iteration % cfg.probe_every == 0:
            probe_now(iteration)
        try:
            row = run_iteration(
                policy, optimizer, scorer, train_split, method, settings, iteration, ema, ranks
            )
        except FloatingPointError as error:
            raise SystemExit(
                f"iteration {iteration}: {error}; the last good checkpoint is kept in {checkpoint_dir}"
            ) from error
        cumulative += row["nfe_sampling"] + row.get("nfe_training", 0)
        row |= {"nfe_cumulative": cumulative, "wall_s": time.perf_counter() - began}
        history.append(row)
        run.log_metrics({k: v for k, v in row.items() if isinstance(v, (int, float))}, step=iteration)
        if ranks.is_main:
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
        if (iteration + 1) % cfg.checkpoint_every == 0 or iteration + 1 == cfg.iterations:
            checkpoint(iteration + 1)
        guard.end_unit()
        if progress is not None:
            progress.advance(note=f"rollout mixed reward {row['reward_mixed']:.4f}")
    if ema is not None:
        ema.copy_to_parameters()
    probe_now(len(history))
    return {
        "iterations": len(history),
        "iterations_configured": cfg.iterations,
        "cut_short": len(history) < cfg.iterations,
        "train_seconds": round(time.perf_counter() - began, 1),
        "nfe_cumulative": cumulative,
        "prompts_per_iteration": settings.prompts_per_iteration,
        "leaves_per_prompt": method.schedule.leaves_per_prompt,
        "reward_weights": settings.reward_weights,
        "history": history,
        "probes": probes,
    }


SNAPSHOTS = "snapshots"


def snapshot_store(checkpoint_dir: Path) -> Path:
    """Where a run keeps its snapshots until it ends: beside its checkpoint, which is replaced
    whole at every save, and outside the declared ``snapshots/`` output, which Snakemake
    clears before a rerun that resumes."""
    return checkpoint_dir.with_name("checkpoint_snapshots")


def drop_snapshots_after(folder: Path, iteration: int) -> None:
    """Remove the snapshots of iterations after ``iteration`` (a run that starts afresh, or
    resumes from an earlier checkpoint, writes them again)."""
    for done, path in snapshot_files(folder).items():
        if done > iteration:
            path.unlink()


def result_weights(policy, ema: Ema | None) -> dict[str, torch.Tensor]:
    """The weights a run would end with now: its trainable parameters, or their averages."""
    weights = trainable_weights(policy)
    if ema is None:
        return weights
    average_of = {id(param): shadow for param, shadow in zip(ema.parameters, ema.shadow, strict=True)}
    return {name: average_of[id(param)] for name, param in trainable_state(policy)}


def save_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """A safetensors file of finite tensors, written atomically."""
    weights = {k: v.contiguous().cpu() for k, v in weights.items()}
    require_finite(weights, f"{path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_path(path) as tmp:
        save_file(weights, tmp)


def write_outputs(out_dir: Path, policy, info: dict) -> None:
    """metrics.parquet, probe.parquet, weights.safetensors, snapshots/ and train_info.json."""
    for name, rows in (("metrics", info.pop("history")), ("probe", info.pop("probes"))):
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        io.write_parquet(out_dir / f"{name}.parquet", table)
    save_weights(out_dir / "weights.safetensors", trainable_weights(policy))
    snapshots = out_dir / SNAPSHOTS
    snapshots.mkdir(exist_ok=True)
    for kept in snapshot_files(snapshot_store(out_dir / "checkpoint")).values():
        shutil.copyfile(kept, snapshots / kept.name)
    io.write_json(out_dir / "train_info.json", info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True, help="method name (for records)")
    parser.add_argument("--train", type=Path, required=True, help="curated train split (Parquet)")
    parser.add_argument("--base-model", type=Path, required=True, help="base model folder")
    parser.add_argument("--config-json", required=True, help="what decides the weights")
    parser.add_argument("--runtime-json", required=True, help="guards, workers, layout, probe")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument(
        "--card", type=Path, default=None, help="base model card figures (inverse_std_weights)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="CPU threads of the job (shared by its processes)"
    )
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--nproc", type=int, default=1, help="training processes, one per GPU (torchrun)")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw, runtime = json.loads(args.config_json), json.loads(args.runtime_json)
    model, (cfg, method, settings) = raw["model"], run_plan(raw, runtime, args.card)
    if not args.train.is_file():
        raise SystemExit(f"--train {args.train}: no such file")
    check_branch_noise(method, raw)
    try:
        distributed.check_shardable(settings.prompts_per_iteration, args.nproc)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    if args.nproc > 1 and not distributed.is_worker():
        return distributed.launch(args.nproc, "pipeline.train", sys.argv[1:] if argv is None else argv)
    ranks, device = distributed.init(args.device)
    try:
        if args.threads:
            torch.set_num_threads(max(1, args.threads // ranks.world_size))
        torch.manual_seed(cfg.seed)
        policy = load_policy(
            model["backend"],
            args.base_model,
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            device=device,
            gradient_checkpointing=cfg.gradient_checkpointing,
            **backend_options(model),
        )
        if cfg.channels_last:
            policy.module.to(memory_format=torch.channels_last)
        tracked = (
            tracking.stage_run(
                args, raw, resume_file=args.out_dir / tracking.RESUME_RUN_FILE, runtime=runtime
            )
            if ranks.is_main
            else contextlib.nullcontext(tracking.StageRun())
        )
        with tracked as run:
            info = train(
                policy, pd.read_parquet(args.train), raw, runtime, args.out_dir, run, ranks, args.card
            )
            if ranks.is_main:
                write_outputs(args.out_dir, policy, info | {"method": args.method})
    finally:
        distributed.shutdown(ranks)
    if ranks.is_main:
        print(f"{args.method}: {info['iterations']} iterations in {info['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
