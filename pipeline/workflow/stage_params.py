"""What each stage reads from the study config, as the JSON it is handed.

Each ``*_params`` function returns the config slice one stage gets as ``--config-json``. The
workflow passes it as a Snakemake param, so a change of any key in it, and of no other, reruns
the stage (and what depends on its outputs). Settings that cannot change a stage's results —
time guards, worker counts, memory layout, the training probe's cadence — come from the
``*_runtime`` functions instead; the workflow hands them over outside the rerun trigger, so
changing them reruns nothing (docs/guide.md, "How rebuilds are decided").

The workflow (``rules/common.smk``) and the benchmarks that run stages without Snakemake
(``bench/multiseed.py``) both build a stage's JSON here, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses

from pipeline.config.types import PRETRAIN_RUNTIME_KEYS, TRAIN_RUNTIME_KEYS, StudyConfig
from pipeline.rewards import REWARDS, full_settings

# The sampling keys of RL rollouts, and of ODE evaluation.
ROLLOUT_SAMPLING_KEYS = ("train_steps", "noise_level", "sde_type", "shift", "max_batch")
EVAL_SAMPLING_KEYS = ("eval_steps", "guidance", "shift", "max_batch", "eval_chunk")
# A trained run's keys that evaluation needs to rebuild its network (the LoRA adapter's shape).
ADAPTER_KEYS = ("lora_rank", "lora_alpha")


def _pick(section, keys) -> dict:
    data = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else dict(section)
    return {key: data[key] for key in keys}


def _without(section, keys) -> dict:
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in keys}


def mlflow_init_params(cfg: StudyConfig) -> dict:
    return dataclasses.asdict(cfg.mlflow)


def generate_prompts_params(cfg: StudyConfig) -> dict:
    return dataclasses.asdict(cfg.dataset.source.generator)


def curate_dataset_params(cfg: StudyConfig) -> dict:
    """Curation of OCR prompt files into OCR-Color-10 rows."""
    return dataclasses.asdict(cfg.dataset.curation)


def curate_captions_params(cfg: StudyConfig) -> dict:
    """Curation of captions: the same section (a study runs one curation rule or the other)."""
    return curate_dataset_params(cfg)


def model_params(cfg: StudyConfig) -> dict:
    """The model keys a sampling or training stage reads: the backend and, for the diffusers
    backends, what ``load_policy`` takes (the mini model's own sizes live in its folder)."""
    model = cfg.model
    keys = {
        "mini": (),
        "sd3": ("resolution", "dtype", "require_gpu"),
        "flux": ("resolution", "dtype", "distilled_guidance", "require_gpu"),
    }
    return {"backend": model.backend, **_pick(model, keys[model.backend])}


def reward_settings(cfg: StudyConfig, names) -> dict:
    """The ``rewards`` settings sections the named rewards read (``Reward.config_sections``:
    their own, and the shared OCR engine's for those that read text)."""
    sections = full_settings(cfg.rewards.sections)
    wanted = {section for name in names for section in REWARDS[name].config_sections}
    return {section: sections[section] for section in sorted(wanted)}


def pretrain_base_params(cfg: StudyConfig) -> dict:
    return {
        "pretrain": _without(cfg.pretrain, PRETRAIN_RUNTIME_KEYS),
        "mini": dataclasses.asdict(cfg.model.mini),
    }


def pretrain_base_runtime(cfg: StudyConfig) -> dict:
    return _pick(cfg.pretrain, PRETRAIN_RUNTIME_KEYS)


def train_params(cfg: StudyConfig, method: str, seed: int) -> dict:
    """One training run: method ``method``, training seed ``seed``. The study's seed list is
    left out, so that adding a seed reruns no existing run, and so is ``nodes`` at 1, so that
    the one-node runs trained before the key existed plan nothing."""
    single_node = ("nodes",) if cfg.train.nodes == 1 else ()
    train = _without(cfg.train, (*TRAIN_RUNTIME_KEYS, "seeds", *single_node)) | {"seed": int(seed)}
    return {
        "train": train,
        "method": dataclasses.asdict(cfg.methods[method]),
        "sampling": _pick(cfg.sampling, ROLLOUT_SAMPLING_KEYS),
        "rewards": reward_settings(cfg, cfg.method_train(method).trained_rewards()),
        "model": model_params(cfg),
    }


def train_runtime(cfg: StudyConfig) -> dict:
    """The train keys outside the rerun trigger, and the probe's sampler: it previews the test
    split, so it samples with the evaluation's steps and (unless ``probe_guidance``) guidance."""
    runtime = _pick(cfg.train, TRAIN_RUNTIME_KEYS)
    if runtime["probe_guidance"] is None:
        runtime["probe_guidance"] = cfg.sampling.guidance
    return runtime | {"probe_steps": cfg.sampling.eval_steps}


def sample_eval_params(cfg: StudyConfig, seed: int | None) -> dict:
    """ODE evaluation of one model: the base model (``seed`` None) or a run of training seed
    ``seed``, whose adapter shape it needs."""
    params = {
        "sampling": _pick(cfg.sampling, EVAL_SAMPLING_KEYS),
        "model": model_params(cfg),
        "evaluation": _pick(cfg.evaluation, ("seeds", "max_prompts")),
    }
    if seed is not None:
        params["train"] = _pick(cfg.train, ADAPTER_KEYS)
    return params


def score_params(cfg: StudyConfig) -> dict:
    names = list(cfg.rewards.score)
    return {
        "rewards": names,
        "settings": reward_settings(cfg, names),
        "strict_images": cfg.evaluation.strict_images,
    }


def base_model_card_params(cfg: StudyConfig) -> dict:
    """The base model card: the sampler settings it quotes beside its figures."""
    return {"sampling": dataclasses.asdict(cfg.sampling)}


def base_group_spreads_params(cfg: StudyConfig) -> dict:
    """The base model's SDE groups under the training sampler: the rollouts' sampling keys,
    guidance and SDE window, the scored rewards and the groups' size and seed."""
    return {
        "sampling": _pick(cfg.sampling, ROLLOUT_SAMPLING_KEYS),
        "rewards": {"score": list(cfg.rewards.score), **reward_settings(cfg, cfg.rewards.score)},
        "card": dataclasses.asdict(cfg.card),
        "rollout": _pick(cfg.train, ("guidance", "sde_steps")),
    }


def report_params(cfg: StudyConfig) -> dict:
    return {
        "report": dataclasses.asdict(cfg.report),
        "model": {"backend": cfg.model.backend},
        "rewards": {"score": list(cfg.rewards.score)},
        "pretrain": _pick(cfg.pretrain, ("steps",)),
        "train": _pick(cfg.train, ("iterations", "guidance", "reward_weights")),
        "sampling": _pick(cfg.sampling, ("guidance",)),
        "evaluation": _pick(cfg.evaluation, ("equal_nfe_reference",)),
        "methods": {name: dataclasses.asdict(method) for name, method in cfg.methods.items()},
    }
