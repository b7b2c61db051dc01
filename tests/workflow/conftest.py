"""One run of the tiny study, shared by the workflow tests of a session."""

from __future__ import annotations

import pytest

from tests.workflow.study import copy_workflow, snakemake

TINY = ("--configfile", "config_tiny.yaml")


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    folder = copy_workflow(tmp_path_factory.mktemp("study"))
    snakemake(folder, *TINY, "-c2")
    return folder
