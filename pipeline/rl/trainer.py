"""The GRPO training run, top to bottom: resume, then per iteration sample a forest, score its
leaves, compute advantages and update (:func:`run_iteration`), probe, log and checkpoint.

Every method of the comparison runs through this loop; they differ only in the tree schedule
and the advantage settings (:mod:`pipeline.rl.settings`). The phases live in
:mod:`pipeline.rl.rollouts` and :mod:`pipeline.rl.update`. With several processes each samples
and trains its share of the prompts, and advantages come from the gathered batch
(:mod:`pipeline.rl.distributed`); one process is the case of one rank.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config.files import config_hash
from pipeline.config.types import TrainConfig
from pipeline.models.ema import Ema, without_averages
from pipeline.models.policy import Policy, trainable_state
from pipeline.models.weights import load_trainable_weights, save_weights, trainable_weights
from pipeline.rewards import Reward, build_rewards
from pipeline.rewards.scoring import LeafScorer
from pipeline.rl import distributed
from pipeline.rl.credit import step_credit
from pipeline.rl.distributed import SINGLE, Ranks
from pipeline.rl.rollouts import PhaseTimer, indicator_means, probe, probe_batch, sample_and_score
from pipeline.rl.settings import LoopSettings, MethodSpec, run_plan, scored_rewards
from pipeline.rl.update import by_reward, plan_edges, update
from pipeline.runtime.checkpoint import (
    drop_snapshots_after,
    load_checkpoint,
    restart_remedy,
    save_checkpoint,
    snapshot_name,
    snapshot_store,
)
from pipeline.runtime.progress import Progress
from pipeline.runtime.time_guard import TimeGuard


def run_iteration(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    rewards: dict[str, Reward] | LeafScorer,
    train: pd.DataFrame,
    method: MethodSpec,
    settings: LoopSettings,
    iteration: int,
    ema: Ema | None = None,
    ranks: Ranks = SINGLE,
) -> dict:
    """One GRPO iteration of this rank's share of the prompts; returns the whole batch's
    metrics row (the same on every rank but for the wall times: ``seconds`` and one
    ``seconds_<phase>`` per phase: rollout, decode, scoring, advantages, update)."""
    began, timer = time.perf_counter(), PhaseTimer(policy.device)
    scorer = rewards if isinstance(rewards, LeafScorer) else LeafScorer(rewards)
    scored = sample_and_score(policy, scorer, train, method, settings, iteration, timer, ranks)
    forest, scores, names = scored.forest, scored.scores, scorer.names
    leaf_rewards = torch.tensor(scores[names].to_numpy(), dtype=torch.float32)
    with timer("advantages"):
        plan = plan_edges(forest, leaf_rewards, names, method, settings, iteration)
    advantages, edges = plan.advantages, plan.edges
    with timer("update"):
        rng = np.random.default_rng([settings.seed, iteration, 1])
        first, count = scored.first_edge, len(scored.rollout.edge_child)
        stats = (
            update(
                policy,
                optimizer,
                scored.rollout,
                advantages[first : first + count],
                edges,
                settings,
                rng,
                ema,
                ranks,
                first,
                plan.weights,
            )
            if len(edges)
            else {}
        )
    group_std = scores.assign(group=forest.leaf_prompt.numpy()).groupby("group")[names].std(ddof=0)
    row = {
        "iteration": iteration,
        "prompts": len(forest.prompts),
        "leaves": len(forest.leaf_nodes),
        "nfe_sampling": forest.nfe,
        "trained_edges": len(edges),
        "edges": len(forest.edge_child),
        "seconds": time.perf_counter() - began,
        "reward_mixed": float((leaf_rewards @ by_reward(settings.reward_weights, names)).mean()),
        "zero_variance_groups": float((group_std.max(axis=1) <= 1e-6).mean()),
        "advantage_mean": advantages[edges].mean().item() if len(edges) else 0.0,
        "advantage_abs_mean": advantages[edges].abs().mean().item() if len(edges) else 0.0,
    }
    row |= step_credit(
        forest.edge_step[edges], plan.weights[edges], advantages[edges], method.schedule.num_steps
    )
    row |= {f"seconds_{phase}": seconds for phase, seconds in timer.seconds.items()}
    for name in names:
        row[f"{name}_mean"], row[f"{name}_std"] = float(scores[name].mean()), float(scores[name].std(ddof=0))
    return row | indicator_means(scorer.rewards, scores) | stats


def rollout_scorer(names: list[str], settings: dict, workers: int, device: torch.device) -> LeafScorer:
    """The rollouts' scorer: model rewards (PickScore) on the policy's ``device``, the
    per-image rewards (OCR, colour) in ``workers`` CPU processes."""
    return LeafScorer(build_rewards(names, settings, device=str(device)), workers, settings)


def train(
    policy,
    train_split: pd.DataFrame,
    raw: dict,
    runtime: dict,
    out_dir: Path,
    run,
    code_digest: str,
    ranks: Ranks = SINGLE,
    card: Path | None = None,
) -> dict:
    """The training run of the ``train`` stage's config (``raw``, ``runtime``); the rollout
    scorer (and its worker pool) lives as long as it. ``code_digest`` identifies the code: a
    checkpoint resumes only under the same config and code."""
    plan = run_plan(raw, runtime, card)
    cfg = plan[0]
    scorer = rollout_scorer(scored_rewards(cfg, raw), raw["rewards"], cfg.score_workers, policy.device)
    try:
        result = _train_loop(
            policy, scorer, plan, train_split, raw, runtime, out_dir, run, ranks, code_digest
        )
    except BaseException:  # Ctrl-C included: stop the workers, do not wait on their tasks
        scorer.close(abort=True)
        raise
    scorer.close()
    return result


def _train_loop(
    policy,
    scorer: LeafScorer,
    plan: tuple[TrainConfig, MethodSpec, LoopSettings],
    train_split: pd.DataFrame,
    raw: dict,
    runtime: dict,
    out_dir: Path,
    run,
    ranks: Ranks,
    code_digest: str,
) -> dict:
    cfg, method, settings = plan
    parameters = policy.trainable_parameters()
    distributed.broadcast_parameters(parameters, ranks)  # before the EMA copies them
    optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = Ema(parameters, cfg.ema_decay, cfg.ema_every, cfg.ema_warmup) if cfg.ema_decay > 0 else None
    # A checkpoint resumes only under the same weight-deciding config and the same code.
    checkpoint_dir = out_dir / "checkpoint"
    stage_hash = config_hash({"config": raw, "code": code_digest})
    start, history, probes, elapsed = resume(policy, optimizer, ema, checkpoint_dir, stage_hash, ranks)
    if ranks.is_main:
        drop_snapshots_after(snapshot_store(checkpoint_dir), start)
    began = time.perf_counter() - elapsed
    guard = TimeGuard("train", cfg.max_minutes, cfg.on_time_limit, cfg.stall_minutes)
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
    with guard:
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


def result_weights(policy, ema: Ema | None) -> dict[str, torch.Tensor]:
    """The weights a run would end with now: its trainable parameters, or their averages."""
    weights = trainable_weights(policy)
    if ema is None:
        return weights
    average_of = {id(param): shadow for param, shadow in zip(ema.parameters, ema.shadow, strict=True)}
    return {name: average_of[id(param)] for name, param in trainable_state(policy)}


def resume(
    policy,
    optimizer: torch.optim.Optimizer,
    ema: Ema | None,
    checkpoint_dir: Path,
    stage_hash: str,
    ranks: Ranks,
) -> tuple[int, list[dict], list[dict], float]:
    """Restore the run's checkpoint in ``checkpoint_dir`` if it was written under ``stage_hash``:
    the weights, EMA and optimizer state; returns the iterations done, the metrics and probe
    rows so far and the elapsed seconds (all empty for a fresh start)."""
    restored = load_checkpoint(checkpoint_dir, optimizer, stage_hash, counter="iteration")
    if restored is None:
        if checkpoint_dir.exists() and ranks.is_main:
            print("checkpoint from another config or code: starting afresh")
        return 0, [], [], 0.0
    weights, state = restored
    source = checkpoint_dir / "weights.safetensors"
    load_trainable_weights(policy, without_averages(weights), source, restart_remedy(checkpoint_dir))
    if ema is not None:
        ema.restore(weights)
    if ranks.is_main:
        print(f"resuming at iteration {state['iteration']}")
    return state["iteration"], state["history"], state["probes"], state["elapsed_s"]
