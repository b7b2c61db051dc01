"""The tiny study end to end: outputs, MLflow runs, and rebuilding only what changed."""

from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest
import yaml

from tests.workflow.study import copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.workflow

TINY = ("--configfile", "config_tiny.yaml")
DATASET = "datasets/ocr_color_10_tiny"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = copy_workflow(tmp_path_factory.mktemp("study"))
    snakemake(folder, *TINY, "-c2")
    return folder


def test_outputs_exist_with_expected_rows(study):
    for split, n_prompts in (("train", 60), ("test", 20)):
        table = pd.read_parquet(study / DATASET / f"{split}.parquet")
        assert 0.8 * n_prompts <= len(table) <= n_prompts
        assert set(table.source) <= {"allowed", "augmented"}
    card = (study / DATASET / "README.md").read_text()
    assert "## Counts" in card and "held out of training" in card


def test_every_job_is_an_mlflow_run(study):
    from pipeline.tracking import _client

    client = _client(f"sqlite:///{study / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    rules = Counter(run.data.tags["rule"] for run in runs)
    assert rules == Counter({"generate_prompts": 1, "curate_dataset": 2, "dataset_card": 1})
    assert all(run.info.status == "FINISHED" for run in runs)
    run_id = (study / DATASET / "test_mlflow_run_id.txt").read_text().strip()
    assert client.get_run(run_id).data.tags["wildcard.split"] == "test"


def _variant(study, path: str, value) -> str:
    raw = yaml.safe_load((study / "config_tiny.yaml").read_text())
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[leaf] = value
    name = f"variant_{path.replace('.', '_')}.yaml"
    (study / name).write_text(yaml.safe_dump(raw))
    return name


def test_rebuild_only_what_changed(study):
    assert planned_jobs(study, *TINY) == Counter(), "a complete study should plan nothing"

    generator = _variant(study, "dataset.source.generator.n_test", 21)
    assert planned_jobs(study, "--configfile", generator) == Counter(
        {"generate_prompts": 1, "curate_dataset": 2, "dataset_card": 1, "all": 1}
    )
    curation = _variant(study, "dataset.curation.seed", 3)
    assert planned_jobs(study, "--configfile", curation) == Counter(
        {"curate_dataset": 2, "dataset_card": 1, "all": 1}
    )
    # Editing one stage's code reruns that stage and what follows, nothing before it.
    card_code = study / "pipeline" / "dataset_card.py"
    card_code.write_text(card_code.read_text() + "\n# edited\n")
    assert planned_jobs(study, *TINY) == Counter({"dataset_card": 1, "all": 1})


def test_bad_config_fails_before_any_job(study):
    bad = _variant(study, "dataset.source.generator.n_train", -1)
    result = snakemake(study, "-n", "--configfile", bad, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "dataset.source.generator.n_train" in message and "-1" in message
