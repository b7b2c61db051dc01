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
    kind: str = "generated"
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    files: FilesConfig = field(default_factory=FilesConfig)


@dataclass(frozen=True)
class CurationConfig:
    seed: int = 0


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
class StudyConfig:
    study: str
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)


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
    validate(raw, source)
    cfg = _build(StudyConfig, raw)
    if check_paths:
        for key, path in input_paths(cfg).items():
            if not Path(path).is_file():
                raise ConfigError(f"{source}: config key {key!r}: file {path!r} does not exist")
        for key, path in input_dirs(cfg).items():
            if not path or not Path(path).is_dir():
                raise ConfigError(f"{source}: config key {key!r}: local folder {path!r} does not exist")
    return cfg


def input_paths(cfg: StudyConfig) -> dict[str, str]:
    """Every input file the config names, by key path."""
    paths = {}
    if cfg.dataset.source.kind == "files":
        paths["dataset.source.files.train"] = cfg.dataset.source.files.train
        paths["dataset.source.files.test"] = cfg.dataset.source.files.test
    if cfg.dataset.compare_with is not None:
        paths["dataset.compare_with"] = cfg.dataset.compare_with
    return paths


def input_dirs(cfg: StudyConfig) -> dict[str, str]:
    """Every local model folder the config needs, by key path."""
    dirs = {}
    if "pickscore" in cfg.rewards.score:
        dirs["rewards.pickscore.model_dir"] = cfg.rewards.pickscore.model_dir or ""
    if cfg.rewards.ocr.backend == "paddleocr":
        dirs["rewards.ocr.paddle_det_dir"] = cfg.rewards.ocr.paddle_det_dir or ""
        dirs["rewards.ocr.paddle_rec_dir"] = cfg.rewards.ocr.paddle_rec_dir or ""
    return dirs


def load_file(path: str | Path, check_paths: bool = True) -> StudyConfig:
    path = Path(path)
    return load(yaml.safe_load(path.read_text(encoding="utf-8")), str(path), check_paths)


def canonical_json(obj) -> str:
    """Stable JSON of a config slice (dataclass or plain data): sorted keys, no spaces."""
    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def config_hash(obj) -> str:
    """Short SHA-256 of :func:`canonical_json`, used to tag MLflow runs."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:12]
