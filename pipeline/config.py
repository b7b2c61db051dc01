"""Typed mirror of ``config.yaml`` and its validation.

The JSON schema (``rules/schemas/config.schema.yaml``) is the single statement of what a
config may hold, what each key means and its default; :func:`load` checks a config dict
against it and turns it into frozen dataclasses whose defaults are read from it. Errors name
the key path and the bad value, e.g.
``config key 'dataset.source.generator.n_train': -5 is less than the minimum of 1``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "rules" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A config that does not match the schema or names a missing file."""


@cache
def load_schema() -> dict:
    """The config schema (parsed once per process)."""
    return yaml.safe_load(SCHEMA_PATH.read_text(encoding="utf-8"))


def schema_node(path: str) -> dict:
    """The schema of the config section or key at ``path`` (``train``, ``methods.*``, ``""``)."""
    node = load_schema()
    for key in filter(None, path.split(".")):
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return node


def _immutable(value):
    """A schema default as a frozen dataclass default: lists as tuples, dicts by a factory."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, dict):
        return field(default_factory=lambda: dict(value))
    return value


def defaults_from_schema(path: str):
    """Class decorator (under ``@dataclass``): every annotated field without a value of its own
    takes its default from the schema at ``path``, so that the schema is the one home of the
    defaults. Nested sections set their own ``field(default_factory=...)``; a field that is not
    a config key (``TrainConfig.seed``) sets its own value and says why."""

    def decorate(cls):
        properties = schema_node(path).get("properties", {})
        for name in cls.__annotations__:
            if name in cls.__dict__:
                continue
            if "default" not in properties.get(name, {}):
                raise TypeError(f"{cls.__name__}.{name}: {SCHEMA_PATH.name} has no default for {path}.{name}")
            setattr(cls, name, _immutable(properties[name]["default"]))
        return cls

    return decorate


# Each class mirrors one schema section; the schema documents its keys (python -m pipeline.config
# --reference prints them).
@dataclass(frozen=True)
@defaults_from_schema("mlflow")
class MlflowConfig:
    tracking_uri: str
    experiment: str
    artifact_root: str


@dataclass(frozen=True)
@defaults_from_schema("dataset.source.generator")
class GeneratorConfig:
    n_train: int
    n_test: int
    word_min_len: int
    word_max_len: int
    heldout_fraction: float
    seed: int


@dataclass(frozen=True)
@defaults_from_schema("dataset.source.files")
class FilesConfig:
    train: str
    test: str
    train_lines: str | None
    test_lines: str | None


@dataclass(frozen=True)
@defaults_from_schema("dataset.source")
class SourceConfig:
    kind: str
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    files: FilesConfig = field(default_factory=FilesConfig)


@dataclass(frozen=True)
@defaults_from_schema("dataset.curation")
class CurationConfig:
    seed: int
    min_words: int


@dataclass(frozen=True)
@defaults_from_schema("dataset")
class DatasetConfig:
    name: str
    compare_with: str | None
    source: SourceConfig = field(default_factory=SourceConfig)
    curation: CurationConfig = field(default_factory=CurationConfig)


@dataclass(frozen=True)
@defaults_from_schema("rewards.ocr")
class OcrSettings:
    backend: str
    mode: str
    paddle_det_dir: str | None
    paddle_rec_dir: str | None


@dataclass(frozen=True)
@defaults_from_schema("rewards.color")
class ColorSettings:
    temperature: float
    use_ocr_boxes: bool


@dataclass(frozen=True)
@defaults_from_schema("rewards.pickscore")
class PickScoreSettings:
    model_dir: str | None
    processor_dir: str | None
    batch_size: int


@dataclass(frozen=True)
@defaults_from_schema("rewards")
class RewardsConfig:
    score: tuple[str, ...]
    ocr: OcrSettings = field(default_factory=OcrSettings)
    color: ColorSettings = field(default_factory=ColorSettings)
    pickscore: PickScoreSettings = field(default_factory=PickScoreSettings)

    def settings(self) -> dict:
        """Per-reward options for :func:`pipeline.rewards.build_rewards` (no ``score`` list)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "score"}


@dataclass(frozen=True)
@defaults_from_schema("model.mini")
class MiniModelConfig:
    max_text_len: int
    d_model: int
    text_layers: int
    block_out_channels: tuple[int, ...]
    position_map_channels: int
    cell_coordinates: bool
    template_channels: int


@dataclass(frozen=True)
@defaults_from_schema("model")
class ModelConfig:
    backend: str
    path: str | None
    resolution: int
    dtype: str
    distilled_guidance: float
    require_gpu: bool
    mini: MiniModelConfig = field(default_factory=MiniModelConfig)


@dataclass(frozen=True)
@defaults_from_schema("pretrain")
class PretrainConfig:
    steps: int
    max_minutes: float
    on_time_limit: str
    batch_size: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    caption_dropout: float
    sigma_mean: float
    sigma_std: float
    sigma_uniform_share: float
    shade_spread: float
    competing_background: float
    ema_decay: float
    checkpoint_every: int
    seed: int


@dataclass(frozen=True)
@defaults_from_schema("sampling")
class SamplingConfig:
    train_steps: int
    eval_steps: int
    guidance: float
    noise_level: float
    sde_type: str
    shift: float
    max_batch: int
    eval_chunk: int


@dataclass(frozen=True)
@defaults_from_schema("card")
class CardConfig:
    group_prompts: int
    group_size: int
    seed: int


# Train and pretrain keys that decide when and how a run is watched or laid out, not what it
# learns: the workflow passes them outside the rerun trigger (pipeline.stage_params).
TRAIN_RUNTIME_KEYS = (
    "max_minutes",
    "on_time_limit",
    "score_workers",
    "channels_last",
    "probe_prompts",
    "probe_every",
    "probe_guidance",
)
PRETRAIN_RUNTIME_KEYS = ("max_minutes", "on_time_limit")


@dataclass(frozen=True)
@defaults_from_schema("train")
class TrainConfig:
    iterations: int
    max_minutes: float
    on_time_limit: str
    prompts_per_iteration: int
    learning_rate: float
    weight_decay: float
    lora_rank: int
    lora_alpha: int
    clip_range: float
    beta: float
    kl_units: str
    max_grad_norm: float
    optimizer_steps_per_iteration: int
    microbatch: int
    guidance: float
    train_last_step: bool
    edge_fraction: float
    edge_sampling: str
    equal_sampling_nfe: bool
    edge_weighting: str
    sde_steps: int
    ema_decay: float
    ema_every: int
    ema_warmup: bool
    detach_uncond: bool
    checkpoint_every: int
    probe_prompts: int
    probe_every: int
    probe_guidance: float | None
    seeds: tuple[int, ...]
    gpus: int
    gradient_checkpointing: bool
    mixed_precision: str
    score_workers: int
    channels_last: bool
    reward_weights: dict
    z_weights: dict | None
    std_floor: dict
    # Not a config key: the seed of one training run, set by the workflow from its seed
    # wildcard (it seeds prompt draws, rollout noise and edge subsampling).
    seed: int = 0

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
@defaults_from_schema("methods.*")
class MethodConfig:
    roots: int
    branch_steps: tuple[int, ...]
    branch_factors: tuple[int, ...]
    between: str
    mixing: str
    std_mode: str
    renormalize: str
    aggregate: str
    branch_noise_scale: float
    reward_weights: dict | None
    inverse_std_weights: bool


@dataclass(frozen=True)
@defaults_from_schema("evaluation")
class EvaluationConfig:
    seeds: tuple[int, ...]
    max_prompts: int
    strict_images: bool
    equal_nfe_reference: str | None


@dataclass(frozen=True)
@defaults_from_schema("report")
class ReportConfig:
    grid_prompts: int
    title: str
    reference_method: str
    alpha: float
    min_seeds: int


@dataclass(frozen=True)
@defaults_from_schema("")
class StudyConfig:
    study: str = field()  # required: no default
    self_contained: bool
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
    run_methods: tuple[str, ...] | None
    # name -> method, built from the config's methods section (only run_methods, if set)
    methods: dict = field(default_factory=dict)

    def method_train(self, method: str) -> TrainConfig:
        """The train config of ``method``'s runs: its own ``reward_weights`` where it states them."""
        weights = self.methods[method].reward_weights
        if weights is None:
            return self.train
        return dataclasses.replace(self.train, reward_weights=dict(weights))

    def trained_rewards(self) -> list[str]:
        """Every reward some method's training scores (:meth:`TrainConfig.trained_rewards`)."""
        names = [n for m in self.methods for n in self.method_train(m).trained_rewards()]
        return list(dict.fromkeys(names or self.train.trained_rewards()))


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
    validator = jsonschema.Draft7Validator(load_schema())
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
    schema = load_schema() if schema is None else schema
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
    # stage and must not depend on the sampler's source (pipeline.sources).
    per_call = sampling.max_batch if sampling.guidance == 1 else max(1, sampling.max_batch // 2)
    if sampling.eval_chunk % per_call:
        raise ConfigError(
            f"{source}: config key 'sampling.eval_chunk' ({sampling.eval_chunk}) must be a multiple of the "
            f"prompts per model call ({per_call}: sampling.max_batch {sampling.max_batch}"
            f"{', halved for CFG' if sampling.guidance != 1 else ''}), so that chunks batch the rows as the "
            "whole split would and the images do not depend on it"
        )
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
    """Fail on a reward name that is not in ``registry`` (``pipeline.rewards.REWARDS``), naming
    the key, and (``check_paths``) on a local folder that a used reward needs
    (``Reward.local_folders``) and that does not exist. The schema takes any name, so that a new
    reward is its module and one registry line; the registry is passed in because this module
    must not import the rewards (every stage imports it, and would then rerun whenever a
    reward's code changes)."""
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
    if not check_paths:
        return
    settings = cfg.rewards.settings()
    for name in dict.fromkeys([*cfg.rewards.score, *cfg.trained_rewards()]):
        for folder in registry[name].local_folders:
            path = settings.get(name, {}).get(folder) or ""
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
    if cfg.rewards.ocr.backend == "paddleocr":
        dirs["rewards.ocr.paddle_det_dir"] = cfg.rewards.ocr.paddle_det_dir or ""
        dirs["rewards.ocr.paddle_rec_dir"] = cfg.rewards.ocr.paddle_rec_dir or ""
    return dirs


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice, and aliases: a config
    has no use for them, and a few hundred bytes of nested aliases expand to a billion nodes
    for any code that walks the result (the "billion laughs")."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(
                f"{event.start_mark.name}, line {event.start_mark.line + 1}: YAML alias *{event.anchor}: "
                "aliases are not allowed in a config; write the value out"
            )
        return super().compose_node(parent, index)

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


def _leaves(node: dict, path: tuple[str, ...] = ()):
    """``(key path, schema)`` of every key with a default, in the schema's order."""
    if "default" in node:
        yield ".".join(path), node
        return
    for key, child in node.get("properties", {}).items():
        yield from _leaves(child, (*path, key))
    item = node.get("additionalProperties")
    if isinstance(item, dict) and "properties" in item:
        yield from _leaves(item, (*path, "NAME"))


def _value_leaves(node, path: tuple[str, ...] = ()):
    """``(key path, value)`` of every leaf of a parsed config (mappings are descended)."""
    if isinstance(node, dict) and node:
        for key, child in node.items():
            yield from _value_leaves(child, (*path, str(key)))
    else:
        yield path, node


def with_schema_defaults(raw: dict, node: dict | None = None) -> dict:
    """``raw`` with every absent key that has a schema default filled in with it (nested
    sections recursively, and each entry of a named-entries section such as ``methods``): the
    config the stages see, since every dataclass takes the schema's defaults."""
    node = load_schema() if node is None else node
    out = dict(raw)
    for key, child in node.get("properties", {}).items():
        if key in out:
            if isinstance(out[key], dict) and ("properties" in child or "additionalProperties" in child):
                out[key] = with_schema_defaults(out[key], child)
        elif "default" in child:
            out[key] = child["default"]
        elif "properties" in child:
            filled = with_schema_defaults({}, child)
            if filled:
                out[key] = filled
    entries = node.get("additionalProperties")
    if isinstance(entries, dict) and "properties" in entries:
        for key in set(out) - set(node.get("properties", {})):
            if isinstance(out[key], dict):
                out[key] = with_schema_defaults(out[key], entries)
    return out


def unused_sections(effective: dict, reward_sections: dict | None = None) -> list[tuple[str, ...]]:
    """Key paths the study never reads, whatever their values: the mini model's sections for
    another backend, the generator or file source not chosen, the ``rewards`` sections no
    scored or trained reward reads (``reward_sections``: name -> the sections it reads, the
    registry's ``Reward.config_sections``; by default its own), methods outside
    ``run_methods``."""
    model, source = effective.get("model", {}), effective.get("dataset", {}).get("source", {})
    unused = []
    if model.get("backend", "mini") != "mini":
        unused += [("pretrain",), ("card",), ("model", "mini")]
    else:  # the mini model's sizes live in its folder; it needs no GPU
        unused += [("model", key) for key in ("path", "resolution", "dtype", "require_gpu")]
    if model.get("backend") != "flux":
        unused.append(("model", "distilled_guidance"))
    unused.append(
        ("dataset", "source", "files" if source.get("kind", "generated") == "generated" else "generator")
    )
    train = effective.get("train", {})
    used_rewards = set(effective.get("rewards", {}).get("score", []))
    for weights in ("reward_weights", "z_weights"):
        used_rewards |= {name for name, weight in (train.get(weights) or {}).items() if weight}
    sections = reward_sections or {}
    read = {section for name in used_rewards for section in sections.get(name, (name,))}
    unused += [
        ("rewards", name) for name in effective.get("rewards", {}) if name != "score" and name not in read
    ]
    selected = effective.get("run_methods")
    if selected is not None:
        unused += [("methods", name) for name in effective.get("methods", {}) if name not in selected]
    return unused


def inherited_keys(effective: dict, stated: dict, reward_sections: dict | None = None) -> list[str]:
    """Dotted keys whose value the study uses but ``stated`` (the study's own files) does not
    give: taken from the base config. Unused sections (:func:`unused_sections`) are left out."""
    unused = unused_sections(effective, reward_sections)
    stated_paths = {path for path, _ in _value_leaves(stated)}
    return [
        ".".join(path)
        for path, _ in _value_leaves(effective)
        if path not in stated_paths
        and path != ("self_contained",)
        and not any(path[: len(prefix)] == prefix for prefix in unused)
    ]


def check_self_contained(
    effective: dict, stated: dict, source: str, reward_sections: dict | None = None, base: str = "config.yaml"
) -> None:
    """For a study that declares ``self_contained``: no used key may come from ``base``."""
    if not effective.get("self_contained"):
        return
    inherited = inherited_keys(effective, stated, reward_sections)
    if inherited:
        values = dict(_value_leaves(effective))
        listed = ", ".join(f"{key} ({values[tuple(key.split('.'))]!r})" for key in inherited[:12])
        more = f" and {len(inherited) - 12} more" if len(inherited) > 12 else ""
        raise ConfigError(
            f"{source}: self_contained, yet {len(inherited)} keys it uses come from {base}: {listed}{more}; "
            "state each in the file (python -m pipeline.config FILE --effective lists them)"
        )


def reference_markdown() -> str:
    """Every config key with its default and meaning, from the schema (docs/config.md)."""
    lines = [
        "# Configuration keys",
        "",
        f"Generated from `rules/schemas/{SCHEMA_PATH.name}` by `python -m pipeline.config --reference`;",
        "edit the schema, not this file. A key a study config leaves out takes its default.",
        "`config.yaml` (the default study) states every key with the reason for its value.",
    ]
    section = None
    for key, node in _leaves(load_schema()):
        top = key.split(".")[0]
        if top != section:
            section = top
            lines += ["", f"## {top}", "", "| key | default | meaning |", "|---|---|---|"]
        default = json.dumps(node["default"])
        meaning = str(node.get("description", "")).replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, rewards: dict | None = None) -> int:
    """``python -m pipeline.config FILE ...``: check config files as the workflow does.

    Every file is parsed strictly (syntax errors and duplicate keys name file and line), merged
    onto ``--base`` (default ``config.yaml``) as Snakemake merges every ``--configfile``, and
    checked like the workflow's config (schema, cross-key checks, local paths, reward names and
    folders against ``rewards``, the registry, when given; a ``self_contained`` file may take
    no used key from the base). Snakemake's own loader reports a broken ``--configfile``
    without file or line, hence this command. ``--effective`` also prints every used key with
    its value, marking those the file takes from the base; ``--reference`` prints every key's
    default and meaning instead.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--base", type=Path, default=Path("config.yaml"), help="what an overlay extends")
    parser.add_argument("--no-paths", action="store_true", help="do not check that input paths exist")
    parser.add_argument("--reference", action="store_true", help="print every key's default and meaning")
    parser.add_argument(
        "--effective",
        action="store_true",
        help="print every key the study uses with its value, marking those taken from --base",
    )
    args = parser.parse_args(argv)
    if args.reference:
        print(reference_markdown(), end="")
        return 0
    if not args.files:
        parser.error("give config files to check, or --reference")
    sections = {name: getattr(reward, "config_sections", (name,)) for name, reward in (rewards or {}).items()}
    failed = 0
    for path in args.files:
        try:
            stated = raw = read_yaml(path)
            # Snakemake merges every --configfile onto config.yaml, whole or not.
            overlay = path.resolve() != args.base.resolve()
            if overlay:
                raw = merged(read_yaml(args.base), raw)
            effective = with_schema_defaults(raw)
            if args.effective:
                print(effective_listing(effective, stated if overlay else raw, path, args.base, sections))
            cfg = load(raw, str(path), check_paths=not args.no_paths)
            check_self_contained(effective, stated if overlay else raw, str(path), sections, str(args.base))
            if rewards is not None:
                check_rewards(cfg, rewards, str(path), check_paths=not args.no_paths)
        except (ConfigError, OSError) as error:
            print(f"{path}: {error}" if isinstance(error, OSError) else str(error))
            failed += 1
        else:
            print(f"{path}: ok")
    return 1 if failed else 0


def effective_listing(effective: dict, stated: dict, path: Path, base: Path, sections: dict) -> str:
    """Every key the study uses, ``key: value``, those taken from ``base`` marked."""
    inherited = set(inherited_keys(effective, stated, sections))
    unused = unused_sections(effective, sections)
    lines = [f"# {path}: the effective config ({len(inherited)} used keys taken from {base}, marked <<)"]
    for key_path, value in _value_leaves(effective):
        if any(key_path[: len(prefix)] == prefix for prefix in unused):
            continue
        key = ".".join(key_path)
        lines.append(f"{key}: {json.dumps(value)}" + (f"  << {base}" if key in inherited else ""))
    return "\n".join(lines)


def merged(base: dict, overlay: dict) -> dict:
    """``overlay`` merged onto ``base`` key by key, nested mappings recursively (Snakemake's rule)."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (
            merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


if __name__ == "__main__":
    # Imported here, where this module is the command: every stage imports this module, and
    # would otherwise depend on (and rerun for) every reward's source (pipeline.sources).
    from pipeline.rewards import REWARDS

    raise SystemExit(main(rewards=REWARDS))
