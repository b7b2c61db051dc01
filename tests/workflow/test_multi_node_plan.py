"""A multi-node study plans on any machine (a dry run needs no cluster) but starts only under
SLURM: run here, where no ``srun`` is on PATH, it stops before its first job and says why."""

from __future__ import annotations

import pytest

from tests.workflow.conftest import TINY
from tests.workflow.study import copy_workflow, snakemake

pytestmark = pytest.mark.workflow


@pytest.fixture
def two_nodes(tmp_path):
    folder = copy_workflow(tmp_path)
    (folder / "two_nodes.yaml").write_text("train:\n  nodes: 2\n")
    return folder


def test_a_dry_run_of_a_multi_node_study_says_each_train_jobs_layout(two_nodes):
    result = snakemake(two_nodes, "-n", *TINY, "two_nodes.yaml")
    out = result.stdout + result.stderr
    assert "train multi_grpo/seed0: 2 nodes x 1 GPUs = 2 ranks" in out
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --gres=gpu:1" in out


def test_a_multi_node_study_run_without_slurm_stops_before_any_job(two_nodes, monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # and the venv's bin, which the helper puts first: no srun
    result = snakemake(two_nodes, *TINY, "two_nodes.yaml", "-c1", check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'train.nodes' (2): a multi-node training job runs under SLURM (srun is not" in out
    assert not (two_nodes / "results").exists() or not any((two_nodes / "results").rglob("*.parquet"))
    assert "Finished job" not in out
