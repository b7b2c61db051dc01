"""Each stage's config JSON holds what it reads; run-time keys are in none of them."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from pipeline.config.load import load
from pipeline.config.types import TRAIN_RUNTIME_KEYS, StudyConfig, TrainConfig
from pipeline.rewards import REWARDS
from pipeline.workflow import stage_params
from tests.conftest import REPO


@pytest.fixture(scope="module")
def cfg() -> StudyConfig:
    return load(yaml.safe_load((REPO / "config.yaml").read_text()))


def _with(cfg, section: str, **changes) -> StudyConfig:
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})


def _every_stage(cfg) -> dict:
    return {
        "mlflow_init": stage_params.mlflow_init_params(cfg),
        "generate_prompts": stage_params.generate_prompts_params(cfg),
        "curate": stage_params.curate_dataset_params(cfg),
        "pretrain": stage_params.pretrain_base_params(cfg),
        "card": stage_params.base_model_card_params(cfg),
        "score": stage_params.score_params(cfg),
        "report": stage_params.report_params(cfg),
        **{f"train {m}": stage_params.train_params(cfg, m, 0) for m in cfg.methods},
        "eval base": stage_params.sample_eval_params(cfg, None),
        "eval run": stage_params.sample_eval_params(cfg, 0),
    }


def test_a_training_run_gets_every_train_key_but_the_runtime_ones_and_the_seed_list(cfg):
    train = stage_params.train_params(cfg, "multi_grpo", 3)["train"]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    # nodes only above 1: one-node runs trained before the key existed keep their params
    assert set(train) == fields - set(TRAIN_RUNTIME_KEYS) - {"seeds", "nodes"}
    assert train["seed"] == 3
    spread = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, nodes=2))
    assert stage_params.train_params(spread, "multi_grpo", 3)["train"] == train | {"nodes": 2}
    runtime = stage_params.train_runtime(cfg)
    assert set(runtime) == {*TRAIN_RUNTIME_KEYS, "probe_steps"}
    # The probe previews the test split: the evaluation's guidance (probe_guidance null) and steps.
    assert (
        runtime["probe_guidance"] == cfg.sampling.guidance
        and runtime["probe_steps"] == cfg.sampling.eval_steps
    )


@pytest.mark.parametrize(
    ("section", "changes"),
    [
        ("train", {"max_minutes": 99.0}),
        ("train", {"on_time_limit": "stop"}),
        ("train", {"score_workers": 7}),
        ("train", {"channels_last": True}),
        ("train", {"probe_every": 9, "probe_prompts": 3, "probe_guidance": 2.5}),
        ("train", {"stall_minutes": 1.5}),
        ("train", {"max_restarts": 3, "rendezvous_port": 29400}),
        ("pretrain", {"max_minutes": 99.0, "on_time_limit": "stop", "stall_minutes": 2.5}),
    ],
)
def test_a_runtime_key_is_in_no_stage_params(cfg, section, changes):
    assert _every_stage(_with(cfg, section, **changes)) == _every_stage(cfg)


def test_evaluation_keys_leave_training_alone(cfg):
    changed = _with(cfg, "sampling", eval_steps=cfg.sampling.eval_steps + 4, guidance=3.0)
    before, after = _every_stage(cfg), _every_stage(changed)
    differ = {stage for stage in before if before[stage] != after[stage]}
    # The card quotes the evaluation's sampler; the report warns when training and test differ.
    assert differ == {"eval base", "eval run", "card", "report"}


def test_settings_of_an_unused_reward_reach_no_stage(cfg):
    pickscore = cfg.rewards.sections.get("pickscore", {})
    batch_size = REWARDS["pickscore"].read_settings(pickscore).batch_size
    sections = cfg.rewards.sections | {"pickscore": pickscore | {"batch_size": batch_size + 1}}
    changed = _with(cfg, "rewards", sections=sections)
    assert _every_stage(changed) == _every_stage(cfg)


def test_a_reward_gets_the_sections_it_reads(cfg):
    # The colour reward measures inside the OCR boxes: it reads the OCR engine's settings too.
    assert set(stage_params.reward_settings(cfg, ["color"])) == {"color", "ocr"}
    assert set(stage_params.reward_settings(cfg, ["quality"])) == set()


def test_the_mini_model_slice_is_its_backend_only(cfg):
    assert stage_params.model_params(cfg) == {"backend": "mini"}
    sd3 = _with(cfg, "model", backend="sd3", path="/models/sd3")
    assert stage_params.model_params(sd3) == {
        "backend": "sd3",
        "resolution": 512,
        "dtype": "float32",
        "require_gpu": False,
    }
