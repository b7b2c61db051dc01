"""Planning a study stays light: the DAG's build (every dry run, every ``make`` target, each of
the rebuild test's hundred plans) imports neither torch nor diffusers, which cost about two
thirds of a dry run's CPU time when a DAG check first pulled them in."""

from __future__ import annotations

import pytest

from tests.workflow.conftest import TINY
from tests.workflow.study import copy_workflow, snakemake

pytestmark = pytest.mark.workflow

HEAVY = {"torch", "diffusers", "transformers", "scipy", "mlflow"}


def modules_imported(import_profile: str) -> set[str]:
    """Top-level names of the modules in ``python -X importtime``'s report (stderr)."""
    names = set()
    for line in import_profile.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_planning_a_study_imports_no_heavy_library(tmp_path, monkeypatch):
    folder = copy_workflow(tmp_path)
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")
    result = snakemake(folder, "-n", *TINY)
    imported = modules_imported(result.stderr)
    assert "snakemake" in imported, "the import profile was not read"
    assert not HEAVY & imported, f"the DAG's build imported {sorted(HEAVY & imported)}"
