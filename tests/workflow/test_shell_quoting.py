"""Config-derived paths reach the stages verbatim: a prompt file whose path holds a space
and shell syntax is curated by a real job, and the shell syntax is never executed."""

from __future__ import annotations

import shlex

import pytest
import yaml

from tests.workflow.study import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

PROMPTS = 'A sign that reads "OPEN" in red letters\nA poster that says "SALE" in blue\n'


def test_hostile_paths_are_quoted_not_executed(tmp_path):
    folder = copy_workflow(tmp_path)
    hostile = folder / "my prompts" / "p$(touch INJECTED).txt"
    hostile.parent.mkdir()
    hostile.write_text(PROMPTS * 40, encoding="utf-8")  # as many as an iteration samples (DAG check)
    published = folder / "my prompts" / "published `touch INJECTED2`.csv"
    published.write_text("prompt,text,color\n", encoding="utf-8")
    config = yaml.safe_load((folder / "configs" / "flow_grpo_ocr_test.yaml").read_text())
    config["dataset"]["name"] = "quoting"
    config["dataset"]["compare_with"] = str(published)
    files = config["dataset"]["source"]["files"]
    files |= {"train": str(hostile), "test": str(hostile), "train_lines": None, "test_lines": "0:2"}
    (folder / "hostile.yaml").write_text(yaml.safe_dump(config))
    target = "datasets/quoting/test.parquet"

    plan = snakemake(folder, "datasets/quoting/README.md", "-n", "-p", "--configfile", "hostile.yaml")
    # Each printed command splits into words with each path as one word, exactly.
    for stage, path in (
        ("pipeline.stages.curate_dataset ", hostile),
        ("pipeline.stages.dataset_card ", published),
    ):
        commands = [line for line in plan.stdout.splitlines() if stage in line]
        assert commands, plan.stdout
        assert str(path) in shlex.split(commands[0]), commands[0]

    snakemake(folder, target, "-c1", "--configfile", "hostile.yaml")
    assert (folder / target).is_file()
    assert not list(folder.rglob("INJECTED*")), "a config value was executed by the shell"


def test_every_stage_runs_unbuffered(tmp_path):
    """A stage's log keeps what it printed before a kill -9: Python runs with -u."""
    folder = copy_workflow(tmp_path)
    plan = snakemake(folder, "-n", "-p")
    lines = [line for line in plan.stdout.splitlines() if "-m pipeline." in line]
    # The stage itself, after the GPU slot wrapper (which execs it) where a job has one.
    commands = [line.rsplit("python", 1)[1] for line in lines]
    assert len(commands) >= 10, plan.stdout
    assert all(command.startswith(" -u -m pipeline.") for command in commands), commands
    wrapped = [line.split("python", 1)[1] for line in lines if "pipeline.workflow.gpu_slots" in line]
    assert all(line.startswith(" -m pipeline.workflow.gpu_slots ") for line in wrapped) and len(wrapped) >= 5
