"""A new reward is its class plus one registry line, settings included: a toy reward registered
at run time, with a settings class of its own, is checked and configured from a study config and
shows in the score stage's table, the training metrics and the report, with its label and
indicator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from pipeline.config.load import check_rewards, load
from pipeline.config.schema import ConfigError
from pipeline.data.palette import PALETTE
from pipeline.data.text_images import LIGHT, render
from pipeline.rewards import REWARDS
from pipeline.rewards.base import Reward
from pipeline.stages import report, score, train
from pipeline.workflow import stage_params
from tests.conftest import REPO
from tests.smoke.tiny import tiny_mini_dir, tiny_study


@dataclass(frozen=True)
class BrightnessSettings:
    """``rewards.brightness``: the mean pixel value above which an image counts as bright."""

    threshold: float = 0.5


class BrightnessReward(Reward):
    """Mean pixel value in 0..1; indicator ``bright``: above ``threshold``."""

    name = "brightness"
    label = "brightness (toy)"
    indicators: ClassVar[dict[str, str]] = {"bright": "bright images"}
    settings_class = BrightnessSettings
    config_sections: ClassVar[tuple[str, ...]] = ("brightness",)
    detail_defaults: ClassVar[dict] = {"bright": False}

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def score_image(self, rgb: np.ndarray, meta: dict, target: None) -> tuple[float, dict]:
        brightness = float(rgb.mean()) / 255.0
        return brightness, {"bright": brightness > self.threshold}


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(REWARDS, BrightnessReward.name, BrightnessReward)


def _samples(folder, model: str) -> pd.DataFrame:
    records = []
    for line, (word, colour) in enumerate([("HELLO", "red"), ("TIGER", "blue"), ("CAT", "black")]):
        path = folder / f"{line}.png"
        Image.fromarray(render(word, PALETTE[colour], LIGHT)).save(path)
        prompt = f'A sign that reads "{word}". The color of the text "{word}" is {colour}.'
        records.append(
            {"image_path": path.name, "prompt": prompt, "text": word, "color": colour}
            | {"line_id": line, "seed": 0, "model": model}
        )
    table = pd.DataFrame(records)
    table.to_parquet(folder / "samples.parquet")
    return table


def test_a_toy_reward_reaches_scores_metrics_and_report(tmp_path, toy_registered):
    # Scores: its column, and its indicator as a detail column.
    models = {}
    for model in ("base", "flow_grpo/seed0"):
        folder = tmp_path / model.replace("/", "_")
        folder.mkdir()
        _samples(folder, model)
        rewards = folder / "rewards.parquet"
        argv = ["--samples", str(folder / "samples.parquet"), "--out", str(rewards)]
        assert score.main([*argv, "--rewards", "ocr,brightness", "--workers", "1"]) == 0
        models[model] = folder
    table = pd.read_parquet(models["base"] / "rewards.parquet")
    toy = table[table.reward == "brightness"]
    assert len(toy) == 3 and toy.score.between(0.5, 1.0).all() and toy.bright.all()

    # Training metrics: trained with a weight, it gets <name>_mean and <indicator>_mean rows.
    cfg = tiny_study(
        iterations=1, probe_prompts=0, score_workers=0, reward_weights={"ocr": 1.0, "brightness": 1.0}
    )
    split = tmp_path / "train.parquet"
    _samples(tmp_path, "train")[["prompt", "text", "color"]].to_parquet(split)
    out = tmp_path / "run"
    argv = [
        "--method",
        "flow_grpo",
        "--train",
        str(split),
        "--base-model",
        str(tiny_mini_dir(tmp_path / "mini")),
    ]
    argv += ["--config-json", json.dumps(stage_params.train_params(cfg, "flow_grpo", 0))]
    argv += ["--runtime-json", json.dumps(stage_params.train_runtime(cfg)), "--out-dir", str(out)]
    assert train.main([*argv, "--device", "cpu"]) == 0
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert {"brightness_mean", "brightness_std", "bright_mean"} <= set(metrics.columns)
    assert metrics.brightness_mean.between(0.0, 1.0).all()

    # Report: its label and its indicator's label in the page, its columns in the summary.
    flags = []
    for model, folder in models.items():
        flags += [
            "--rewards",
            f"{model}={folder / 'rewards.parquet'}",
            "--samples",
            f"{model}={folder / 'samples.parquet'}",
        ]
    raw = stage_params.report_params(cfg)
    raw["rewards"]["score"] = ["ocr", "brightness"]
    assert report.main([*flags, "--config-json", json.dumps(raw), "--out-dir", str(tmp_path / "report")]) == 0
    summary = pd.read_csv(tmp_path / "report" / "summary.csv")
    assert {"brightness", "bright", "mixed"} <= set(summary.columns)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "brightness (toy)" in page and "bright images" in page


def test_a_toy_reward_s_settings_are_checked_and_reach_its_scores(tmp_path, toy_registered):
    """Its section needs no schema entry: the workflow's checks read it with the reward's own
    settings class, and the score stage builds the reward from it."""
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["rewards"]["score"] = ["ocr", "brightness"]
    raw["rewards"]["brightness"] = {"threshold": 0.99}
    cfg = load(raw)
    check_rewards(cfg, REWARDS)
    settings = stage_params.score_params(cfg)["settings"]
    assert settings["brightness"] == {"threshold": 0.99}
    refusals = {
        "'rewards.brightness.thresh': unknown key": {"thresh": 0.9},
        "'rewards.brightness.threshold': 'high' is invalid": {"threshold": "high"},
    }
    for message, bad in refusals.items():
        with pytest.raises(ConfigError, match=message):
            check_rewards(load(raw | {"rewards": raw["rewards"] | {"brightness": bad}}), REWARDS)
    with pytest.raises(ConfigError, match="'rewards.dimness': no reward has settings of this name"):
        check_rewards(load(raw | {"rewards": raw["rewards"] | {"dimness": {}}}), REWARDS)

    # The same images are bright at the default threshold and not at the configured one.
    _samples(tmp_path, "base")
    bright = {}
    for name, section in (("default", "{}"), ("configured", json.dumps(settings))):
        out = tmp_path / f"{name}.parquet"
        argv = ["--samples", str(tmp_path / "samples.parquet"), "--out", str(out), "--rewards", "brightness"]
        assert score.main([*argv, "--settings-json", section, "--workers", "1"]) == 0
        bright[name] = pd.read_parquet(out).bright.tolist()
    assert all(bright["default"]) and not any(bright["configured"])
