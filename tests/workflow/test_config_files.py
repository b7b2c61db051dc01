"""Config files that used to be read silently wrong, or failed without a place: a duplicate
key in an overlay or in config.yaml, and a YAML syntax error, each name file and line before
any job."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.workflow.study import copy_workflow, snakemake

pytestmark = pytest.mark.workflow


def test_duplicate_key_in_an_overlay_is_an_error(tmp_path):
    folder = copy_workflow(tmp_path)
    (folder / "overlay.yaml").write_text("train:\n  iterations: 3\n  seeds: [1]\n  iterations: 4\n")
    result = snakemake(folder, "-n", "--configfile", "overlay.yaml", check=False)
    assert result.returncode != 0
    assert (
        "overlay.yaml, line 4: duplicate key 'iterations' (first at line 2)" in result.stdout + result.stderr
    )
    assert not (folder / "results").exists()


def test_syntax_error_in_config_yaml_names_the_line(tmp_path):
    folder = copy_workflow(tmp_path)
    text = (folder / "config.yaml").read_text()
    (folder / "config.yaml").write_text(text.replace("study: mini_ocr_color", "study: [mini_ocr_color"))
    result = snakemake(folder, "-n", check=False)
    assert result.returncode != 0
    assert "config.yaml, line " in result.stdout + result.stderr
    assert "YAML syntax error" in result.stdout + result.stderr


def test_config_command_names_the_line_of_a_broken_overlay(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("train:\n  iterations: [3\n")
    fine = tmp_path / "fine.yaml"
    fine.write_text("train:\n  iterations: 3\n")
    command = [sys.executable, "-m", "pipeline.config", str(broken), str(fine), "--no-paths"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert "broken.yaml, line 3, column 1: YAML syntax error" in result.stdout
    assert "fine.yaml: ok" in result.stdout


def test_nested_command_line_override_is_read_as_a_number(tmp_path):
    folder = copy_workflow(tmp_path)
    result = snakemake(folder, "-n", "--config", "report={grid_prompts: 6}", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = snakemake(folder, "-n", "--config", "report={grid_prompts: six}", check=False)
    assert bad.returncode != 0
    assert "config key 'report.grid_prompts': 'six' is invalid" in bad.stdout + bad.stderr


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        (
            "methods:\n  flow_grpo:\n    roots: 1\n",
            "config key 'methods.flow_grpo.roots' (1) with no branch_steps",
        ),
        (
            "train:\n  prompts_per_iteration: 61\n  equal_sampling_nfe: false\n",
            "an iteration samples 61 distinct prompts, but the train split has at most 60",
        ),
    ],
)
def test_a_study_that_could_not_train_is_refused_when_the_dag_is_built(tmp_path, overlay, expected):
    """A method that trains nothing (groups of one image) and a split smaller than an iteration
    built a DAG, then trained nothing or died inside numpy."""
    folder = copy_workflow(tmp_path)
    (folder / "overlay.yaml").write_text(overlay)
    result = snakemake(folder, "-n", "--configfile", "config_tiny.yaml", "overlay.yaml", check=False)
    assert result.returncode != 0
    assert expected in result.stdout + result.stderr, result.stdout + result.stderr
    assert not (folder / "results").exists()
