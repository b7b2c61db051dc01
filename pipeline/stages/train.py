"""Stage ``train``: GRPO fine-tuning of the base model with one method of the comparison.

    python -m pipeline.stages.train --method multi_grpo --train train.parquet --base-model DIR \
        --config-json '{"train": ..., "method": ..., "sampling": ..., "rewards": ..., "model": ...}' \
        --runtime-json '{"max_minutes": ..., "probe_steps": ..., ...}' --out-dir DIR [--nproc N] [--nnodes M]

``--config-json`` holds what decides the trained weights (pipeline.workflow.stage_params.train_params);
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
probes and writes files. With ``--nnodes M`` the command runs once on each of M nodes (SLURM's
``srun``), each copy an agent of N processes, and the agents meet at a rendezvous on the job's
first node (:mod:`pipeline.rl.launch`). With the run-time key ``max_restarts`` torchrun restarts
the processes after one dies, and they resume from the last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from pipeline.models.backends import backend_options, load_policy
from pipeline.models.weights import save_weights, trainable_weights
from pipeline.rl import distributed
from pipeline.rl.launch import Layout, launch, rendezvous
from pipeline.rl.settings import MethodSpec, run_plan
from pipeline.rl.trainer import train
from pipeline.runtime import io, tracking
from pipeline.runtime.checkpoint import SNAPSHOTS, interrupt_note, snapshot_files, snapshot_store
from pipeline.sampling.schedule import flow_sigmas, sde_mean_x_coefficient
from pipeline.workflow.sources import sources_digest


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


def process_layout(args: argparse.Namespace, runtime: dict, prompts_per_iteration: int) -> Layout:
    """The job's training processes from its command line and run-time settings; stops before
    any work when an iteration's ``prompts_per_iteration`` do not shard evenly over them or its
    nodes have no rendezvous."""
    layout = Layout(args.nproc, args.nnodes, runtime.get("max_restarts", 0))
    try:
        distributed.check_shardable(prompts_per_iteration, layout.world_size)
        if layout.nnodes > 1 and not distributed.is_worker():
            if args.rdzv_endpoint:
                endpoint, run_id = args.rdzv_endpoint, "multigrpo"
            else:
                endpoint, run_id = rendezvous(layout.nnodes, runtime.get("rendezvous_port"), os.environ)
            layout = dataclasses.replace(layout, endpoint=endpoint, run_id=args.rdzv_id or run_id)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    return layout


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
    parser.add_argument(
        "--nproc", type=int, default=1, help="training processes per node, one per GPU (torchrun)"
    )
    parser.add_argument(
        "--nnodes", type=int, default=1, help="nodes of the job, each running this command once (srun)"
    )
    parser.add_argument(
        "--rdzv-endpoint",
        default=None,
        help="HOST:PORT of the nodes' rendezvous (default with --nnodes > 1: the SLURM job's first node)",
    )
    parser.add_argument("--rdzv-id", default=None, help="the rendezvous id (default: the SLURM job id)")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw, runtime = json.loads(args.config_json), json.loads(args.runtime_json)
    model, (cfg, method, settings) = raw["model"], run_plan(raw, runtime, args.card)
    if not args.train.is_file():
        raise SystemExit(f"--train {args.train}: no such file")
    train_split = pd.read_parquet(args.train)
    if len(train_split) < settings.prompts_per_iteration:
        raise SystemExit(
            f"--train {args.train}: {len(train_split)} prompts, fewer than the "
            f"{settings.prompts_per_iteration} distinct prompts an iteration of {args.method} samples "
            f"(train.prompts_per_iteration "
            f"{cfg.prompts_per_iteration}); lower it or give the split more prompts"
        )
    check_branch_noise(method, raw)
    layout = process_layout(args, runtime, settings.prompts_per_iteration)
    if layout.needs_agent() and not distributed.is_worker():
        return launch(layout, "pipeline.stages.train", sys.argv[1:] if argv is None else argv)
    ranks, device = distributed.init(args.device)
    try:
        if args.threads:
            torch.set_num_threads(max(1, args.threads // ranks.local_size))
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
        with interrupt_note(args.out_dir / "checkpoint"), tracked as run:
            code = sources_digest("pipeline.stages.train")
            info = train(policy, train_split, raw, runtime, args.out_dir, run, code, ranks, args.card)
            if ranks.is_main:
                write_outputs(args.out_dir, policy, info | {"method": args.method})
    finally:
        distributed.shutdown(ranks)
    if ranks.is_main:
        print(f"{args.method}: {info['iterations']} iterations in {info['train_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
