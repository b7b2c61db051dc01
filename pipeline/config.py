"""Typed mirror of ``config.yaml`` and its validation.

The JSON schema (``rules/schemas/config.schema.yaml``) is the single statement of what a
config may hold; :func:`load` checks a config dict against it and turns it into frozen
dataclasses with documented defaults. Errors name the key path and the bad value, e.g.
``config key 'dataset.source.generator.n_train': -5 is less than the minimum of 1``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "rules" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match the schema or names a missing file."""


@dataclass(frozen=True)
class MlflowConfig:
    # sqlite is the default because MLflow 3 refuses its file store.
    tracking_uri: str = "sqlite:///results/mlflow.db"
    experiment: str = "multi_grpo"
    artifact_root: str = "results/mlartifacts"


@dataclass(frozen=True)
class GeneratorConfig:
    n_train: int = 2000
    n_test: int = 200
    # One upper-case word of 3 to 6 letters is what the mini model learns to render on 2 cores.
    word_min_len: int = 3
    word_max_len: int = 6
    # Share of words kept out of training entirely, to measure generalisation to unseen words.
    heldout_fraction: float = 0.2
    seed: int = 0


@dataclass(frozen=True)
class FilesConfig:
    train: str = ""
    test: str = ""
    # "START:STOP" 0-based lines of each file to curate; None = all lines.
    train_lines: str | None = None
    test_lines: str | None = None


@dataclass(frozen=True)
class SourceConfig:
    # generated | files (Flow-GRPO OCR prompt files) | captions (one caption per line)
    kind: str = "generated"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    files: FilesConfig = field(default_factory=FilesConfig)


@dataclass(frozen=True)
class CurationConfig:
    seed: int = 0
    # Captions only (source kind "captions"): drop captions of fewer words. PickScore-25k was
    # built from Pick-a-Pic captions of at least 6 words, so 6 is a no-op on those files.
    min_words: int = 0


@dataclass(frozen=True)
class DatasetConfig:
    # Folder under datasets/ for the curated splits and their card.
    name: str = "ocr_color_10"
    # Published split (CSV: line_id, source, color) that the test curation is compared with.
    compare_with: str | None = None
    source: SourceConfig = field(default_factory=SourceConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)


@dataclass(frozen=True)
class OcrSettings:
    # rapidocr runs PaddleOCR's PP-OCR models as ONNX, shipped inside the wheel (offline).
    backend: str = "rapidocr"
    # auto: recognition only for single-line shapes (the mini model's 32 x 128 images),
    # detection + recognition otherwise.
    mode: str = "auto"
    paddle_det_dir: str | None = None
    paddle_rec_dir: str | None = None


@dataclass(frozen=True)
class ColorSettings:
    # Softmax temperature over the palette in Delta-E units: ~10 keeps shades of one name
    # above 0.8 and a neighbouring name's prototype below 0.2 (pipeline/rewards/color.py).
    temperature: float = 10.0
    use_ocr_boxes: bool = True


@dataclass(frozen=True)
class PickScoreSettings:
    model_dir: str | None = None
    processor_dir: str | None = None
    batch_size: int = 16


@dataclass(frozen=True)
class RewardsConfig:
    # What the scoring stage computes for every evaluation image.
    score: tuple[str, ...] = ("ocr", "color", "quality")
    ocr: OcrSettings = field(default_factory=OcrSettings)
    color: ColorSettings = field(default_factory=ColorSettings)
    pickscore: PickScoreSettings = field(default_factory=PickScoreSettings)

    def settings(self) -> dict:
        """Per-reward options for :func:`pipeline.rewards.build_rewards` (no ``score`` list)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "score"}


@dataclass(frozen=True)
class MiniModelConfig:
    # Sizes of the mini backend (pipeline/models/mini.py); ~4.6M parameters by default.
    max_text_len: int = 12
    d_model: int = 128
    text_layers: int = 2
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    # Character position map channels (0 = off); it makes the fixed-layout task learnable
    # in minutes on 2 cores (model card).
    position_map_channels: int = 8
    # Cell-phase and vertical coordinate channels after the map (pipeline/models/mini.py).
    cell_coordinates: bool = True
    # Learned per-character 2-D template channels after them (pipeline/models/mini.py; 0 = none).
    template_channels: int = 0


@dataclass(frozen=True)
class ModelConfig:
    # mini: built and pretrained by the workflow; sd3 / flux: a local diffusers folder (path).
    backend: str = "mini"
    path: str | None = None
    resolution: int = 512  # sd3 only; the mini model is 32 x 128
    dtype: str = "float32"
    # flux only: FLUX.1-dev is guidance-distilled; this value feeds its guidance embedding
    # (3.5 is its usual value and Flow-GRPO's). True CFG is sampling.guidance, as for sd3.
    distilled_guidance: float = 3.5
    mini: MiniModelConfig = field(default_factory=MiniModelConfig)


@dataclass(frozen=True)
class PretrainConfig:
    # The step count is the contract; max_minutes guards this run's wall time and
    # on_time_limit says what a trip does: fail (checkpoint kept, a rerun resumes) or stop
    # early with the result marked as cut short (pipeline.time_guard).
    steps: int = 800
    max_minutes: float = 11.0
    on_time_limit: str = "fail"
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    # Share of examples trained without text, so classifier-free guidance has an
    # unconditional model to contrast with.
    caption_dropout: float = 0.1
    # Logit-normal noise levels: sigmoid(N(mean, std^2)), as SD3 trains.
    sigma_mean: float = 0.0
    sigma_std: float = 1.0
    # Share of noise levels drawn uniformly instead (pipeline/flow_matching.mixed_sigmas).
    sigma_uniform_share: float = 0.25
    # Colour shades drawn up to this far (Delta-E) from each name's prototype, and the share
    # of images on a competing palette-coloured background (pipeline/render.py).
    shade_spread: float = 12.0
    competing_background: float = 0.1
    # Exponential moving average of the weights (0 = off); the saved model is the average.
    ema_decay: float = 0.0
    checkpoint_every: int = 50
    seed: int = 0


@dataclass(frozen=True)
class SamplingConfig:
    # Denoising steps of RL rollouts and of evaluation (Flow-GRPO: 10 and 40 for SD3.5).
    train_steps: int = 10
    eval_steps: int = 16
    guidance: float = 4.0
    # SDE noise level a (Flow-GRPO: 0.7 for Flow-SDE, 0.8 for CPS).
    noise_level: float = 0.7
    sde_type: str = "sde"
    shift: float = 3.0  # SD3's sigma shift
    max_batch: int = 64  # rows per model call


@dataclass(frozen=True)
class CardConfig:
    # SDE group statistics of the base model: prompts and samples per prompt.
    group_prompts: int = 24
    group_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    # The iteration count is the contract; max_minutes guards this run's wall time and
    # on_time_limit says what a trip does: fail (checkpoint kept, a rerun resumes) or stop
    # early with the result marked as cut short (pipeline.time_guard).
    iterations: int = 40
    max_minutes: float = 8.0
    on_time_limit: str = "fail"
    prompts_per_iteration: int = 4
    learning_rate: float = 1e-4
    weight_decay: float = 1e-4
    # LoRA on the denoiser's attention projections; 0 = full fine-tuning (mini only).
    lora_rank: int = 0
    lora_alpha: int = 0
    # PPO clip range on dimension-averaged log-probabilities (Flow-GRPO: 1e-4 .. 1e-3).
    clip_range: float = 1e-3
    # Weight of the KL penalty to the reference policy (Flow-GRPO: 0.04 for OCR), in the units
    # kl_units names: flow_grpo (the step's KL x |dt|, as Flow-GRPO's code computes it, so its
    # betas carry over) or transition (the exact KL of one step's Gaussians; 9x flow_grpo's
    # with 10 uniform steps).
    beta: float = 0.04
    kl_units: str = "flow_grpo"
    max_grad_norm: float = 1.0
    # Optimizer steps per iteration; the trained edges are split evenly between them.
    optimizer_steps_per_iteration: int = 2
    microbatch: int = 32  # edges per forward/backward pass (gradient accumulation)
    # Guidance of the RL rollouts and loss (1 = no CFG, as Flow-GRPO's no-CFG variants; it
    # halves the cost). Evaluation uses sampling.guidance.
    guidance: float = 1.0
    train_last_step: bool = False
    # Share of the trainable edges (random, reseeded each iteration) that get a loss term: a
    # DanceGRPO-style random subset, drawn over edges so that it applies to trees too (Flow-GRPO's
    # timestep_fraction trains every step but the last). Below 1 it buys more prompts per
    # iteration for the same training compute.
    edge_fraction: float = 1.0
    # Loss weight of a trained edge (pipeline.rl.credit): leaves = the leaves below it over the
    # prompt's leaves (the per-trajectory objective: a tree's shared early edges count for every
    # trajectory through them); uniform = every edge once. The same for flat groups.
    edge_weighting: str = "leaves"
    # Rollout steps 0 .. sde_steps - 1 are SDE and trained; later ones are ODE and not
    # trained (0 = every step SDE, as Flow-GRPO). A window at the start, where the layout
    # is decided, keeps late-step noise out of the reward and its small-std steps, whose
    # log-probability gradients are the largest, out of the loss (MixGRPO trains a window).
    sde_steps: int = 0
    ema_decay: float = 0.0  # 0 = no EMA; Flow-GRPO uses 0.9
    checkpoint_every: int = 4
    # A fixed batch of train prompts sampled by ODE (train_steps, the rollouts' guidance, one
    # fixed seed) before the first update, every probe_every iterations and after the last:
    # a training-reward curve free of the per-iteration prompt draw (0 prompts = off).
    probe_prompts: int = 16
    probe_every: int = 4
    # Guidance of the probe's ODE samples (null = the evaluation's, sampling.guidance); the probe
    # samples with the evaluation's steps (sampling.eval_steps), so it previews the test split.
    probe_guidance: float | None = None
    # Training seeds of the study: every method trains once per seed, each its own job
    # (rule train, wildcard seed), and the report compares methods across seeds.
    seeds: tuple[int, ...] = (0,)
    # The seed of one training run: set by the workflow from its seed wildcard, not in a
    # study config (it seeds prompt draws, rollout noise and edge subsampling).
    seed: int = 0
    # Processes (one per GPU) of the train rule, whose gpu resource takes this value; each
    # samples and trains prompts_per_iteration / gpus prompts (it must divide), advantages use
    # the whole batch and gradients are summed over processes, so results do not depend on it.
    gpus: int = 1
    # Recompute the denoiser's activations in the backward pass (less memory, more compute);
    # the diffusers backends (sd3, flux) only.
    gradient_checkpointing: bool = False
    # "no" or "bf16": autocast of the denoiser's forward passes (rollouts and loss) in bf16;
    # the trainable weights, their gradients and the optimizer state stay float32.
    mixed_precision: str = "no"
    # Reward worker processes that score the rollout leaves, each with its own single-threaded
    # OCR engine built once (0 or 1 = in the training process); the scores do not depend on it.
    score_workers: int = 0
    # Keep the denoiser's weights in channels-last memory layout (the same maths, another
    # convolution kernel order; bench/iteration_throughput.py measures the difference).
    channels_last: bool = False
    # Reward weights, shared by every method. Default: each reward's nominal range counts
    # once (ocr and color are 0..1, quality is 0..10).
    reward_weights: dict = field(default_factory=lambda: {"ocr": 1.0, "color": 1.0, "quality": 0.1})
    # Weights on the per-reward z-scores of normalize_then_mix methods (null = 1 for every
    # reward that reward_weights trains: each reward's spread counts once).
    z_weights: dict | None = None
    # Per reward, the smallest within-group std a normalize_then_mix method divides by (in the
    # reward's units), so that a near-constant reward is not blown up to +-1 (0 = no floor).
    std_floor: dict = field(default_factory=dict)

    def advantage_z_weights(self) -> dict[str, float]:
        """``z_weights``, or 1 for every reward with a non-zero ``reward_weights`` entry."""
        if self.z_weights is not None:
            return dict(self.z_weights)
        return {name: 1.0 for name, weight in self.reward_weights.items() if weight != 0}

    def trained_rewards(self) -> list[str]:
        """The rewards a training run scores: non-zero in ``reward_weights`` or ``z_weights``."""
        names = [n for n, w in self.reward_weights.items() if w != 0]
        return names + [n for n, w in self.advantage_z_weights().items() if w != 0 and n not in names]


@dataclass(frozen=True)
class MethodConfig:
    # Tree: roots per prompt, branching steps and factors, and how non-branching steps run.
    roots: int = 8
    branch_steps: tuple[int, ...] = ()
    branch_factors: tuple[int, ...] = ()
    between: str = "sde"
    # mix_then_normalize (Flow-GRPO) or normalize_then_mix (reward-based grouping).
    mixing: str = "mix_then_normalize"
    std_mode: str = "group"  # group | global (the std over all prompts at one depth)
    renormalize: str = "none"  # none | group | batch, after normalize_then_mix
    aggregate: str = "mean"  # node value over descendant leaves: mean | max


@dataclass(frozen=True)
class EvaluationConfig:
    # Seeds of the ODE evaluation samples (one image per test prompt and seed); several
    # seeds give a spread across seeds in the report.
    seeds: tuple[int, ...] = (0,)
    # Evaluate only the first N test prompts (0 = all).
    max_prompts: int = 0
    # An undecodable image file fails the score stage (naming row and file) instead of
    # getting a missing score with the reason "unreadable: ...".
    strict_images: bool = False
    # Equal-NFE comparison: every method without a tree is also evaluated at its training
    # snapshot whose cumulative NFE is nearest this (tree) method's final NFE, per seed
    # (null = off).
    equal_nfe_reference: str | None = None


@dataclass(frozen=True)
class ReportConfig:
    # Prompts shown in the image grids (same prompts and seed across models).
    grid_prompts: int = 8
    title: str = "Multi-GRPO study"
    # The method the others are compared with across seeds (paired differences of the
    # balanced gain B and the worst reward W, with the 2x2 effects).
    reference_method: str = "flow_grpo"
    # Two-sided level of every test of the verdict (Holm across them), and the fewest training
    # seeds per method that a verdict needs (below it: the minimum detectable effect only).
    alpha: float = 0.05
    min_seeds: int = 3


@dataclass(frozen=True)
class StudyConfig:
    study: str
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    card: CardConfig = field(default_factory=CardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    # The methods this study trains (None = every method in the methods section).
    run_methods: tuple[str, ...] | None = None
    # name -> method; built from the config's methods section (only run_methods, if set)
    methods: dict = field(default_factory=dict)


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = f"{where}." if error.absolute_path else ""
        keys = ", ".join(repr(prefix + k) for k in extra)
        return f"config key {keys}: unknown key (valid keys here: {', '.join(allowed)})"
    if error.validator == "required":
        return f"config key {where!r}: {error.message}"
    return f"config key {where!r}: {error.instance!r} is invalid: {error.message}"


def validate(raw: dict, source: str = "config") -> None:
    """Check ``raw`` against the schema; raise :class:`ConfigError` listing every problem."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ConfigError(f"{source} does not match {SCHEMA_PATH.name}:\n{lines}")
    gen = raw.get("dataset", {}).get("source", {}).get("generator", {})
    if gen.get("word_min_len", 0) > gen.get("word_max_len", 10**9):
        raise ConfigError(
            f"{source}: config key 'dataset.source.generator.word_min_len' "
            f"({gen['word_min_len']}) is greater than word_max_len ({gen['word_max_len']})"
        )
    mini = raw.get("model", {}).get("mini", {})
    if mini.get("position_map_channels", MiniModelConfig.position_map_channels) == 0:
        for key in ("cell_coordinates", "template_channels"):
            if mini.get(key):
                raise ConfigError(
                    f"{source}: config key 'model.mini.{key}' ({mini[key]}) needs the character "
                    "position map, but model.mini.position_map_channels is 0"
                )


def coerce_strings(raw, schema: dict | None = None):
    """``raw`` with every string that stands where the schema wants a number, boolean or null
    replaced by its YAML value, when that value has a wanted type.

    Snakemake hands nested ``--config`` values over as strings (``--config
    'report={grid_prompts: 6}'`` gives ``"6"``); the workflow coerces them so that such an
    override means what it says. Other strings are left for the schema check to report.
    """
    schema = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8")) if schema is None else schema
    if isinstance(raw, dict):
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        return {
            key: coerce_strings(value, properties.get(key, extra if isinstance(extra, dict) else {}))
            for key, value in raw.items()
        }
    if isinstance(raw, list):
        items = schema.get("items", {})
        return [coerce_strings(value, items if isinstance(items, dict) else {}) for value in raw]
    wanted = schema.get("type", [])
    wanted = [wanted] if isinstance(wanted, str) else wanted
    if isinstance(raw, str) and "null" in wanted and raw in ("null", "~"):
        return None
    if not isinstance(raw, str) or "string" in wanted or not wanted:
        return raw
    value = yaml.safe_load(raw)
    if isinstance(value, str) and "number" in wanted:  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(raw)
        except ValueError:
            pass
    kinds = {"integer": int, "number": (int, float), "boolean": bool, "null": type(None)}
    ok = any(isinstance(value, kinds.get(kind, ())) for kind in wanted)
    if isinstance(value, bool) and "boolean" not in wanted:  # bool is an int subclass
        ok = False
    return value if ok else raw


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
    cfg = dataclasses.replace(cfg, methods=methods)
    if "methods" in raw and not methods:  # absent: a curation-only study (configs/flow_grpo_ocr_test.yaml)
        raise ConfigError(f"{source}: config key 'methods' is empty: the study would train nothing")
    if cfg.train.sde_steps > cfg.sampling.train_steps:
        raise ConfigError(
            f"{source}: config key 'train.sde_steps' ({cfg.train.sde_steps}) is more than "
            f"sampling.train_steps ({cfg.sampling.train_steps})"
        )
    for name, method in methods.items():
        _check_method(name, method, cfg.sampling.train_steps, cfg.train.sde_steps, source)
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
    train = cfg.train
    if train.prompts_per_iteration % train.gpus:
        raise ConfigError(
            f"{source}: config key 'train.gpus' ({train.gpus}) must divide "
            f"train.prompts_per_iteration ({train.prompts_per_iteration}): every GPU samples an equal share"
        )
    if train.z_weights is not None and not any(weight != 0 for weight in train.z_weights.values()):
        raise ConfigError(
            f"{source}: config key 'train.z_weights': every weight is 0 ({dict(train.z_weights)}), "
            "so normalize_then_mix methods have no reward (null = 1 for every trained reward)"
        )
    reference = cfg.evaluation.equal_nfe_reference
    if reference is not None and reference not in cfg.methods:
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
    if "pickscore" in cfg.rewards.score or "pickscore" in cfg.train.trained_rewards():
        dirs["rewards.pickscore.model_dir"] = cfg.rewards.pickscore.model_dir or ""
    if cfg.model.backend in ("sd3", "flux"):
        dirs["model.path"] = cfg.model.path or ""
    if cfg.rewards.ocr.backend == "paddleocr":
        dirs["rewards.ocr.paddle_det_dir"] = cfg.rewards.ocr.paddle_det_dir or ""
        dirs["rewards.ocr.paddle_rec_dir"] = cfg.rewards.ocr.paddle_rec_dir or ""
    return dirs


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise ConfigError(
                    f"{node.start_mark.name}, line {key_node.start_mark.line + 1}: duplicate key "
                    f"{key!r} (first at line {seen[key] + 1}); YAML would silently keep the last value"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """Parse a YAML config file strictly: a syntax error or a duplicate key is a
    :class:`ConfigError` naming the file and line."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as stream:
            return yaml.load(stream, Loader=_UniqueKeyLoader) or {}
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: YAML syntax error: {error.problem or error}") from None


def load_file(path: str | Path, check_paths: bool = True) -> StudyConfig:
    return load(read_yaml(path), str(path), check_paths)


def canonical_json(obj) -> str:
    """Stable JSON of a config slice (dataclass or plain data): sorted keys, no spaces."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(obj) -> str:
    """Short SHA-256 of :func:`canonical_json`, used to tag MLflow runs."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.config FILE ...``: check config files as the workflow does.

    Every file is parsed strictly (syntax errors and duplicate keys name file and line). A
    whole config is then checked like the workflow's (schema, cross-key checks, local paths);
    an overlay for ``--configfile`` (one without every top-level key) is checked merged onto
    ``--base`` (default ``config.yaml``), as Snakemake merges it. Snakemake's own loader
    reports a broken ``--configfile`` without file or line, hence this command.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--base", type=Path, default=Path("config.yaml"), help="what an overlay extends")
    parser.add_argument("--no-paths", action="store_true", help="do not check that input paths exist")
    args = parser.parse_args(argv)
    required = yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8")).get("required", [])
    failed = 0
    for path in args.files:
        try:
            raw = read_yaml(path)
            if not all(key in raw for key in required):
                raw = _merged(read_yaml(args.base), raw)
            load(raw, str(path), check_paths=not args.no_paths)
        except (ConfigError, OSError) as error:
            print(f"{path}: {error}" if isinstance(error, OSError) else str(error))
            failed += 1
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def _merged(base: dict, overlay: dict) -> dict:
    """``overlay`` merged onto ``base`` key by key, nested mappings recursively (Snakemake's rule)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


if __name__ == "__main__":
    raise SystemExit(main())
