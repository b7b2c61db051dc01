"""What one training run does, repacked from its stage config: the method (tree schedule and
advantage settings) and the trainer's loop settings.

:func:`run_plan` turns the ``train`` stage's ``--config-json`` and ``--runtime-json`` into the
run's :class:`~pipeline.config.types.TrainConfig`, :class:`MethodSpec` and
:class:`LoopSettings`; the stage, the tests and the benches all build a run this way.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config.types import TRAIN_RUNTIME_KEYS, MethodConfig, TrainConfig
from pipeline.sampling.tree_schedule import TreeSchedule, equal_nfe_prompts


@dataclass(frozen=True)
class MethodSpec:
    """One method of the comparison: how it samples and how it turns rewards into advantages."""

    schedule: TreeSchedule
    mixing: str  # mix_then_normalize | normalize_then_mix
    std_mode: str = "group"
    renormalize: str = "none"
    aggregate: str = "mean"
    branch_noise_scale: float = 1.0  # the SDE noise level's factor on branching steps


@dataclass(frozen=True)
class LoopSettings:
    prompts_per_iteration: int
    clip_range: float
    beta: float
    max_grad_norm: float
    optimizer_steps_per_iteration: int
    microbatch: int
    guidance: float
    noise_level: float
    sde_type: str
    shift: float
    max_batch: int
    train_last_step: bool = False
    edge_fraction: float = 1.0
    edge_sampling: str = "uniform"  # uniform | weighted (pipeline.rl.credit.subsample_edges)
    seed: int = 0
    reward_weights: dict[str, float] = field(default_factory=dict)  # mix_then_normalize's, on rewards
    z_weights: dict[str, float] = field(default_factory=dict)  # normalize_then_mix's, on z-scores
    std_floor: dict[str, float] = field(default_factory=dict)  # normalize_then_mix's, reward units
    edge_weighting: str = "leaves"  # leaves | uniform (pipeline.rl.credit)
    mixed_precision: str = "no"  # no | bf16 (autocast of the denoiser's forward passes)
    kl_units: str = "flow_grpo"  # flow_grpo (KL x |dt|) | transition (the exact step KL)
    detach_uncond: bool = True  # the loss's CFG: no gradient through the unconditional branch


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


def run_config(raw: dict, runtime: dict) -> TrainConfig:
    """The run's train config: the weight-deciding keys of ``raw`` and the run-time ones."""
    return TrainConfig(**raw["train"], **{key: runtime[key] for key in TRAIN_RUNTIME_KEYS if key in runtime})


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
    settings = dataclasses.replace(
        loop_settings(cfg, sampling), prompts_per_iteration=iteration_prompt_count(cfg, method)
    )
    return cfg, method, settings


def iteration_prompt_count(train: TrainConfig, method: MethodSpec) -> int:
    """The distinct prompts one iteration of ``method`` samples: ``train.prompts_per_iteration``,
    or with ``equal_sampling_nfe`` those at which its rollouts cost a flat group's NFE."""
    if train.equal_sampling_nfe:
        return equal_nfe_prompts(train.prompts_per_iteration, method.schedule, train.ranks)
    return train.prompts_per_iteration


def scored_rewards(cfg: TrainConfig, raw: dict) -> list[str]:
    """The rewards the rollouts score: the trained ones and, under ``inverse_std_weights``, also
    those the card weighs 0 (no spread at the base), whose means still show the arm's progress."""
    zeroed = list(cfg.reward_weights) if raw["method"].get("inverse_std_weights") else []
    return list(dict.fromkeys([*cfg.trained_rewards(), *zeroed]))
