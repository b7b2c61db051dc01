"""A parsed config checked and turned into :class:`pipeline.config.types.StudyConfig`: the
schema, then the cross-key checks the schema cannot express, reward names and local folders.
Every error names its source and key."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from pipeline.config.files import read_yaml
from pipeline.config.schema import ConfigError, _key_path, validate
from pipeline.config.types import MethodConfig, StudyConfig


def _build(cls, raw: dict):
    """Instantiate dataclass ``cls`` from a (validated) dict, recursing into nested classes."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        value = raw[f.name]
        nested = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested):
            value = _build(nested, value)
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**kwargs)


def load(raw: dict, source: str = "config", check_paths: bool = True) -> StudyConfig:
    """Validate ``raw`` and return the typed config.

    Args:
        raw: the config as parsed from YAML.
        source: where it came from, for error messages.
        check_paths: also fail when a configured input file does not exist.
    """
    bad_numbers = _non_finite(raw)
    if bad_numbers:
        raise ConfigError(f"{source}: config key {', '.join(bad_numbers)}: numbers must be finite")
    if "seed" in (raw.get("train") or {}):
        raise ConfigError(
            f"{source}: config key 'train.seed' is now 'train.seeds', a list (one training run per "
            f"seed): write seeds: [{raw['train']['seed']}]"
        )
    validate(raw, source)
    cfg = _build(StudyConfig, raw)
    methods = {name: _build(MethodConfig, method) for name, method in raw.get("methods", {}).items()}
    selected = raw.get("run_methods")
    if selected is not None:
        unknown = [name for name in selected if name not in methods]
        if unknown:
            raise ConfigError(
                f"{source}: config key 'run_methods': {', '.join(map(repr, unknown))} not in methods "
                f"(defined: {', '.join(methods)})"
            )
        methods = {name: methods[name] for name in selected}
    rewards = raw.get("rewards") or {}
    sections = {name: dict(section) for name, section in rewards.items() if name != "score"}
    rewards_config = dataclasses.replace(cfg.rewards, sections=sections)
    cfg = dataclasses.replace(cfg, methods=methods, rewards=rewards_config)
    if "methods" in raw and not methods:  # absent: a curation-only study (configs/flow_grpo_ocr_test.yaml)
        raise ConfigError(f"{source}: config key 'methods' is empty: the study would train nothing")
    if cfg.train.sde_steps > cfg.sampling.train_steps:
        raise ConfigError(
            f"{source}: config key 'train.sde_steps' ({cfg.train.sde_steps}) is more than "
            f"sampling.train_steps ({cfg.sampling.train_steps})"
        )
    for name, method in methods.items():
        _check_method(name, method, cfg.sampling.train_steps, cfg.train.sde_steps, source)
        if method.inverse_std_weights and cfg.model.backend != "mini":
            raise ConfigError(
                f"{source}: config key 'methods.{name}.inverse_std_weights' needs the base model card, "
                f"which only the mini backend has (model.backend is {cfg.model.backend!r}); state "
                f"methods.{name}.reward_weights instead"
            )
    _check_study(cfg, source)
    if check_paths:
        for key, path in input_paths(cfg).items():
            if not Path(path).is_file():
                raise ConfigError(f"{source}: config key {key!r}: file {path!r} does not exist")
        for key, path in input_dirs(cfg).items():
            if not path or not Path(path).is_dir():
                raise ConfigError(f"{source}: config key {key!r}: local folder {path!r} does not exist")
    return cfg


def _non_finite(node, path=()) -> list[str]:
    """Key paths of the NaN or infinite numbers in a parsed config (YAML reads .nan, .inf)."""
    if isinstance(node, dict):
        return [key for k, v in node.items() for key in _non_finite(v, (*path, k))]
    if isinstance(node, list):
        return [key for i, v in enumerate(node) for key in _non_finite(v, (*path, i))]
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{_key_path(path)!r} ({node})"]
    return []


def _check_study(cfg: StudyConfig, source: str) -> None:
    """Cross-key checks that the schema cannot express; each names its key."""
    train, sampling = cfg.train, cfg.sampling
    # pipeline.sampling.tree.prompts_per_call's rule, restated: this module is imported by every
    # stage and must not depend on the sampler's source (pipeline.workflow.sources).
    per_call = sampling.max_batch if sampling.guidance == 1 else max(1, sampling.max_batch // 2)
    if sampling.eval_chunk % per_call:
        raise ConfigError(
            f"{source}: config key 'sampling.eval_chunk' ({sampling.eval_chunk}) must be a multiple of the "
            f"prompts per model call ({per_call}: sampling.max_batch {sampling.max_batch}"
            f"{', halved for CFG' if sampling.guidance != 1 else ''}), so that chunks batch the rows as the "
            "whole split would and the images do not depend on it"
        )
    if train.prompts_per_iteration % train.ranks:
        layout = f"train.gpus ({train.gpus})" + (f" x train.nodes ({train.nodes})" if train.nodes > 1 else "")
        raise ConfigError(
            f"{source}: config key 'train.gpus': the ranks, {layout} = {train.ranks}, must divide "
            f"train.prompts_per_iteration ({train.prompts_per_iteration}): every GPU samples an equal share"
        )
    if train.z_weights is not None and not any(weight != 0 for weight in train.z_weights.values()):
        raise ConfigError(
            f"{source}: config key 'train.z_weights': every weight is 0 ({dict(train.z_weights)}), "
            "so normalize_then_mix methods have no reward (null = 1 for every trained reward)"
        )
    reference = cfg.evaluation.equal_nfe_reference
    if reference is not None and cfg.methods and reference not in cfg.methods:
        raise ConfigError(
            f"{source}: config key 'evaluation.equal_nfe_reference': {reference!r} is not a method "
            f"of this study ({', '.join(cfg.methods)})"
        )
    if not any(weight != 0 for weight in train.reward_weights.values()):
        raise ConfigError(
            f"{source}: config key 'train.reward_weights': every weight is 0 "
            f"({dict(train.reward_weights)}), so training has no reward"
        )
    generator = cfg.dataset.source.generator
    if (
        cfg.model.backend == "mini"
        and cfg.dataset.source.kind == "generated"
        and generator.word_max_len > cfg.model.mini.max_text_len
    ):
        raise ConfigError(
            f"{source}: config key 'model.mini.max_text_len' ({cfg.model.mini.max_text_len}) is "
            f"shorter than the generator's longest word (dataset.source.generator.word_max_len = "
            f"{generator.word_max_len}): longer texts would be cut"
        )


def _check_method(name: str, method: MethodConfig, steps: int, sde_steps: int, source: str) -> None:
    key = f"methods.{name}"
    if method.inverse_std_weights and (
        method.reward_weights is not None or method.mixing != "mix_then_normalize"
    ):
        raise ConfigError(
            f"{source}: config key '{key}.inverse_std_weights' sets mix_then_normalize's reward weights: it "
            f"takes mixing mix_then_normalize (not {method.mixing!r}) and no {key}.reward_weights"
        )
    if method.roots < 2 and not method.branch_steps:
        raise ConfigError(
            f"{source}: config key '{key}.roots' ({method.roots}) with no branch_steps: each prompt's group "
            "would hold one image, whose advantage is 0, so the method would train nothing; set roots >= 2 "
            "or branch (branch_steps, branch_factors)"
        )
    if len(method.branch_steps) != len(method.branch_factors):
        raise ConfigError(
            f"{source}: config key {key!r}: {len(method.branch_steps)} branch_steps but "
            f"{len(method.branch_factors)} branch_factors"
        )
    if any(step >= steps - 1 for step in method.branch_steps):
        raise ConfigError(
            f"{source}: config key '{key}.branch_steps': {list(method.branch_steps)} must be below "
            f"sampling.train_steps - 1 = {steps - 1} (the last step is not trained)"
        )
    if list(method.branch_steps) != sorted(set(method.branch_steps)):
        raise ConfigError(
            f"{source}: config key '{key}.branch_steps': {list(method.branch_steps)} must increase"
        )
    if sde_steps and any(step >= sde_steps for step in method.branch_steps):
        raise ConfigError(
            f"{source}: config key '{key}.branch_steps': {list(method.branch_steps)} "
            f"must lie inside the SDE window, below train.sde_steps = {sde_steps}"
        )


def check_rewards(cfg: StudyConfig, registry: dict, source: str = "config", check_paths: bool = True) -> None:
    """Fail on a reward name that is not in ``registry`` (``pipeline.rewards.REWARDS``), on a
    ``rewards.<name>`` section that no registered reward's settings class reads, or that class
    refuses (a key it lacks, a value of the wrong type), naming the key, and (``check_paths``)
    on a local folder that a used reward needs (``Reward.local_folders``) and that does not
    exist. The schema takes any reward name and section, so that a new reward, settings
    included, is its module and one registry line; the registry is passed in so that the
    config package does not depend on the rewards' code."""
    named = {
        "rewards.score": list(cfg.rewards.score),
        "train.reward_weights": list(cfg.train.reward_weights),
        "train.z_weights": list(cfg.train.z_weights or {}),
        "train.std_floor": list(cfg.train.std_floor),
    } | {
        f"methods.{name}.reward_weights": list(method.reward_weights)
        for name, method in cfg.methods.items()
        if method.reward_weights is not None
    }
    for key, names in named.items():
        unknown = [name for name in names if name not in registry]
        if unknown:
            raise ConfigError(
                f"{source}: config key {key!r}: unknown reward {', '.join(map(repr, unknown))} "
                f"(rewards: {', '.join(registry)})"
            )
    with_settings = [name for name, reward in registry.items() if getattr(reward, "settings_class", None)]
    for name, section in cfg.rewards.sections.items():
        if name not in with_settings:
            raise ConfigError(
                f"{source}: config key 'rewards.{name}': no reward has settings of this name "
                f"(rewards with settings: {', '.join(with_settings)})"
            )
        try:
            registry[name].read_settings(section)
        except ValueError as error:
            raise ConfigError(f"{source}: config key {error}") from None
    if not check_paths:
        return
    for name in dict.fromkeys([*cfg.rewards.score, *cfg.trained_rewards()]):
        for folder in registry[name].local_folders:
            path = cfg.rewards.sections.get(name, {}).get(folder) or ""
            if not path or not Path(path).is_dir():
                raise ConfigError(
                    f"{source}: config key 'rewards.{name}.{folder}': local folder {path!r} does not exist"
                )


def input_paths(cfg: StudyConfig) -> dict[str, str]:
    """Every input file the config names, by key path."""
    paths = {}
    if cfg.dataset.source.kind in ("files", "captions"):
        paths["dataset.source.files.train"] = cfg.dataset.source.files.train
        paths["dataset.source.files.test"] = cfg.dataset.source.files.test
    if cfg.dataset.compare_with is not None:
        paths["dataset.compare_with"] = cfg.dataset.compare_with
    return paths


def input_dirs(cfg: StudyConfig) -> dict[str, str]:
    """Every local model folder the config needs, by key path."""
    dirs = {}
    if cfg.model.backend in ("sd3", "flux"):
        dirs["model.path"] = cfg.model.path or ""
    ocr = cfg.rewards.sections.get("ocr", {})
    if ocr.get("backend") == "paddleocr":
        dirs["rewards.ocr.paddle_det_dir"] = ocr.get("paddle_det_dir") or ""
        dirs["rewards.ocr.paddle_rec_dir"] = ocr.get("paddle_rec_dir") or ""
    return dirs


def load_file(path: str | Path, check_paths: bool = True) -> StudyConfig:
    return load(read_yaml(path), str(path), check_paths)
