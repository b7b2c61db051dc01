"""Tiny models and configs for smoke tests (seconds on a CPU)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import yaml

from pipeline.config.load import load
from pipeline.config.types import StudyConfig
from pipeline.models.mini import MiniConfig, MiniModel, save_mini
from pipeline.runtime.time_guard import TimeGuard
from pipeline.workflow import stage_params
from tests.conftest import REPO

TINY_MINI = {"d_model": 32, "text_layers": 1, "block_out_channels": [16, 32, 32], "position_map_channels": 4}


def tiny_mini_dir(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = MiniConfig(d_model=32, text_layers=1, block_out_channels=(16, 32, 32), position_map_channels=4)
    save_mini(MiniModel(cfg), folder)
    return folder


def tiny_study(**train_overrides) -> StudyConfig:
    """The default config at the smoke tests' size: 4 rollout steps, 2 prompts, 2 iterations."""
    cfg = load(yaml.safe_load((REPO / "config.yaml").read_text()))
    two_levels = {"branch_steps": (0, 1), "branch_factors": (2, 2)}
    methods = {
        name: dataclasses.replace(method, **two_levels) if method.branch_steps else method
        for name, method in cfg.methods.items()
    }
    train = dataclasses.replace(
        cfg.train,
        **{
            "iterations": 2,
            "prompts_per_iteration": 2,
            "checkpoint_every": 1,
            "microbatch": 16,
            "probe_prompts": 3,
            "sde_steps": 3,  # three stochastic steps then an ODE step: covers trees two levels deep
        }
        | train_overrides,
    )
    sampling = dataclasses.replace(cfg.sampling, train_steps=4, eval_steps=4)
    return dataclasses.replace(cfg, methods=methods, train=train, sampling=sampling)


def train_jsons(method: str = "multi_grpo", **train_overrides) -> tuple[str, str]:
    """The train stage's ``--config-json`` and ``--runtime-json`` for a tiny run of ``method``."""
    cfg = tiny_study(**train_overrides)
    return json.dumps(stage_params.train_params(cfg, method, 0)), json.dumps(stage_params.train_runtime(cfg))


def train_config_json(method: str = "multi_grpo", **train_overrides) -> str:
    """The train stage's ``--config-json`` for a tiny run of ``method``."""
    return train_jsons(method, **train_overrides)[0]


def guard_tripping_after(units: int) -> type[TimeGuard]:
    """A :class:`TimeGuard` that runs out of time after ``units`` steps or iterations, as on
    a machine far slower than the configured counts assume."""

    class TrippingGuard(TimeGuard):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.units = 0

        def end_unit(self) -> None:
            super().end_unit()
            self.units += 1

        def would_exceed(self) -> bool:
            return self.units >= units

    return TrippingGuard
