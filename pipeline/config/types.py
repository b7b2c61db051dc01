"""Typed mirror of ``config.yaml``: one frozen dataclass per schema section, its defaults read
from the schema (:func:`pipeline.config.schema.defaults_from_schema`).

Every stage builds its slice of the config from these classes; they import nothing but the
schema, so a stage depends on no validation, audit or command-line code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from pipeline.config.schema import defaults_from_schema


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
@defaults_from_schema("rewards")
class RewardsConfig:
    score: tuple[str, ...]
    # Not a schema key: the settings sections the config states, ``rewards.<reward name>``,
    # as given. Each reward's settings class (``Reward.settings_class``, in its own module)
    # fills in its defaults and checks its keys (pipeline.rewards.full_settings).
    sections: dict = field(default_factory=dict)


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
    max_minutes: float | None
    on_time_limit: str
    stall_minutes: float | None
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
# learns: the workflow passes them outside the rerun trigger (pipeline.workflow.stage_params).
TRAIN_RUNTIME_KEYS = (
    "max_minutes",
    "on_time_limit",
    "stall_minutes",
    "score_workers",
    "channels_last",
    "probe_prompts",
    "probe_every",
    "probe_guidance",
    "max_restarts",
    "rendezvous_port",
)


PRETRAIN_RUNTIME_KEYS = ("max_minutes", "on_time_limit", "stall_minutes")


@dataclass(frozen=True)
@defaults_from_schema("train")
class TrainConfig:
    iterations: int
    max_minutes: float | None
    on_time_limit: str
    stall_minutes: float | None
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
    nodes: int
    max_restarts: int
    rendezvous_port: int | None
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

    @property
    def ranks(self) -> int:
        """Training processes of one run: ``gpus`` on each of ``nodes`` nodes."""
        return self.nodes * self.gpus

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
