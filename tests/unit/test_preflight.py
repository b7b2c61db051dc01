"""Checks when the DAG is built that read what is on disk: a train split too small for an
iteration's prompts is refused naming the key and both sizes."""

from __future__ import annotations

import copy

import pytest
import yaml

from pipeline.config.load import load
from pipeline.config.schema import ConfigError
from pipeline.workflow.preflight import check_train_prompts, train_prompts_at_most
from tests.conftest import REPO


def _raw(**train) -> dict:
    raw = yaml.safe_load((REPO / "config.yaml").read_text())
    raw["train"] |= train
    return raw


def test_an_iteration_larger_than_the_generated_split_is_refused():
    raw = _raw(prompts_per_iteration=16)
    raw["dataset"]["source"]["generator"]["n_train"] = 12
    with pytest.raises(ConfigError) as error:
        check_train_prompts(load(raw), source="test.yaml")
    message = str(error.value)
    assert "test.yaml: config key 'train.prompts_per_iteration' (16)" in message
    assert "at most 12 (dataset.source.generator.n_train = 12)" in message


def test_a_tree_method_is_checked_at_the_prompts_it_samples():
    """At a flat group's NFE a tree samples more prompts than prompts_per_iteration."""
    raw = _raw(prompts_per_iteration=16)
    raw["dataset"]["source"]["generator"]["n_train"] = 16  # enough for the flat methods only
    with pytest.raises(ConfigError, match=r"method '\w+' samples (1[7-9]|[2-9]\d) at a flat group's NFE"):
        check_train_prompts(load(raw), source="test.yaml")
    no_matching = copy.deepcopy(raw)
    no_matching["train"]["equal_sampling_nfe"] = False
    check_train_prompts(load(no_matching), source="test.yaml")


def test_a_prompt_file_counts_its_selected_lines(tmp_path):
    prompts = tmp_path / "train.txt"
    prompts.write_text("".join(f'A sign that reads "W{i}" in red\n' for i in range(30)), encoding="utf-8")
    raw = _raw(prompts_per_iteration=8, equal_sampling_nfe=False)
    raw["dataset"]["source"] = {
        "kind": "files",
        "files": {"train": str(prompts), "test": str(prompts), "train_lines": "0:6", "test_lines": None},
    }
    cfg = load(raw, check_paths=False)
    assert train_prompts_at_most(cfg) == (6, f"6 lines of {prompts}, dataset.source.files.train_lines '0:6'")
    with pytest.raises(ConfigError, match=r"the train split has at most 6 \(6 lines of .*train.txt"):
        check_train_prompts(cfg, source="test.yaml")
    raw["dataset"]["source"]["files"]["train_lines"] = None
    check_train_prompts(load(raw, check_paths=False), source="test.yaml")  # 30 lines hold 8
