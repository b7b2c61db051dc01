"""The workflow passes `snakemake --lint` and `snakefmt --check`, and plans the default study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.workflow.study import snakemake

pytestmark = pytest.mark.workflow


def test_snakemake_lint_is_clean():
    result = snakemake(REPO, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_check_is_clean():
    snakefmt = Path(sys.executable).parent / "snakefmt"
    result = subprocess.run([str(snakefmt), "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_default_study_dry_run_plans_the_study(tmp_path):
    from tests.workflow.study import copy_workflow, planned_jobs

    jobs = planned_jobs(copy_workflow(tmp_path))
    assert {"mlflow_init", "generate_prompts", "curate_dataset", "dataset_card", "all"} <= set(jobs)
