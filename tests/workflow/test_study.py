"""The tiny study end to end: outputs, MLflow runs, and rebuilding only what changed."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from tests.workflow.conftest import TINY
from tests.workflow.study import config_variant as _variant
from tests.workflow.study import planned_jobs, snakemake

pytestmark = pytest.mark.workflow

DATASET = "datasets/ocr_color_10_tiny"


RESULTS = "results/tiny"
METHODS = ("balanced_mix", "flow_grpo", "multi_grpo", "reward_group", "tree_grpo")
RUNS = tuple(f"{method}/seed0" for method in METHODS)  # train.seeds: [0]
# evaluation.equal_nfe_reference (config_tiny.yaml: multi_grpo): the methods without a tree are
# also evaluated at their snapshot nearest the tree's final NFE.
EQUAL_NFE = ("balanced_mix/seed0/equal_nfe", "flow_grpo/seed0/equal_nfe", "reward_group/seed0/equal_nfe")
MODELS = ("base", *RUNS)
EVALUATED = (*MODELS, *EQUAL_NFE)


def test_outputs_exist_with_expected_rows(study):
    for split, n_prompts in (("train", 60), ("test", 20)):
        table = pd.read_parquet(study / DATASET / f"{split}.parquet")
        assert 0.8 * n_prompts <= len(table) <= n_prompts
        assert set(table.source) <= {"allowed", "augmented"}
    card = (study / DATASET / "README.md").read_text()
    assert "## Counts" in card and "held out of training" in card
    base = study / RESULTS / "base_model"
    assert (base / "model" / "model.safetensors").exists() and (base / "card" / "samples.png").exists()
    assert "SDE groups" in (base / "card" / "README.md").read_text()
    assert len(pd.read_parquet(base / "metrics.parquet")) >= 1
    for run in RUNS:
        metrics = pd.read_parquet(study / RESULTS / "train" / run / "metrics.parquet")
        assert list(metrics.iteration) == [0, 1]
        assert {"ocr_mean", "color_mean", "quality_mean", "nfe_cumulative", "zero_variance_groups"} <= set(
            metrics
        )
        probe = pd.read_parquet(study / RESULTS / "train" / run / "probe.parquet")
        assert list(probe.iteration) == [0, 2]  # before the first update and after the last
        assert {"ocr_mean", "color_mean", "quality_mean", "reward_mixed"} <= set(probe)
    for model in EVALUATED:
        samples = pd.read_parquet(study / RESULTS / "eval" / model / "samples.parquet")
        assert len(samples) == 5 * 2  # 5 prompts x 2 seeds
        rewards = pd.read_parquet(study / RESULTS / "eval" / model / "rewards.parquet")
        assert len(rewards) == 5 * 2 * 3 and set(rewards.reward) == {"ocr", "color", "quality"}
    for run in EQUAL_NFE:
        samples = pd.read_parquet(study / RESULTS / "eval" / run / "samples.parquet")
        assert set(samples.iteration) <= {1, 2} and samples.training_nfe.notna().all()
    summary = pd.read_csv(study / RESULTS / "report" / "summary.csv")
    assert list(summary.model) == ["base", *sorted(RUNS + EQUAL_NFE)]
    assert {"mixed", "ocr", "ocr_exact", "color_correct", "quality", "ocr_seed_std", "training_nfe"} <= set(
        summary.columns
    )
    methods = pd.read_csv(study / RESULTS / "report" / "methods.csv")
    assert list(methods.method) == sorted(METHODS) and set(methods.seeds) == {1}
    assert set(methods.mixed_gain_se_source) == {"one run"} and {"B", "W"} <= set(methods.columns)
    tests = pd.read_csv(study / RESULTS / "report" / "tests.csv")
    assert {"2x2 tree", "2x2 grouping", "2x2 interaction", "multi_grpo - flow_grpo"} <= set(tests.comparison)
    # The control arm: flow_grpo's mix weighted by 1 / each reward's spread on the base card.
    assert "reward_group - balanced_mix" in set(tests.comparison)
    assert set(tests.measure) == {"B", "W", "mixed_gain"}
    info = json.loads((study / RESULTS / "train" / "balanced_mix/seed0" / "train_info.json").read_text())
    spreads = json.loads((study / RESULTS / "base_model" / "card" / "group_spreads.json").read_text())
    for name, weight in info["reward_weights"].items():
        std = spreads[f"{name}_group_std"]
        assert weight == (pytest.approx(1 / std, rel=1e-5) if std > 0 else 0.0)
    equal = pd.read_csv(study / RESULTS / "report" / "equal_nfe.csv")
    assert list(equal.method) == sorted(METHODS)
    html = (study / RESULTS / "report" / "index.html").read_text()
    assert "Training curves" in html and "data:image/png;base64" in html and "stand" in html
    assert "The comparison" in html and "At equal NFE" in html and "Not enough seeds" in html
    base_ocr = summary.loc[summary.model == "base", "ocr"].iloc[0]
    assert f"Every run starts from the base model: test OCR reward {base_ocr:.3f}" in html


def test_every_job_is_an_mlflow_run(study):
    from pipeline.runtime.tracking import _client

    client = _client(f"sqlite:///{study / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    rules = Counter(run.data.tags["rule"] for run in runs)
    assert rules == Counter(
        {
            "generate_prompts": 1,
            "curate_dataset": 2,
            "dataset_card": 1,
            "pretrain_base": 1,
            "base_group_spreads": 1,
            "base_model_card": 1,
            "train": 5,
            "sample_eval": 9,
            "score": 9,
            "report": 1,
        }
    )
    assert all(run.info.status == "FINISHED" for run in runs)
    run_id = (study / DATASET / "test_mlflow_run_id.txt").read_text().strip()
    assert client.get_run(run_id).data.tags["wildcard.split"] == "test"


def test_rebuild_only_what_changed(study):
    assert planned_jobs(study, *TINY) == Counter(), "a complete study should plan nothing"

    downstream = {
        "pretrain_base": 1,
        "base_group_spreads": 1,
        "base_model_card": 1,
        "train": 5,
        "sample_eval": 9,
        "score": 9,
        "report": 1,
        "all": 1,
    }
    generator = _variant(study, "dataset.source.generator.n_test", 21)
    assert planned_jobs(study, "--configfile", generator) == Counter(
        {"generate_prompts": 1, "curate_dataset": 2, "dataset_card": 1, **downstream}
    )
    curation = _variant(study, "dataset.curation.seed", 3)
    assert planned_jobs(study, "--configfile", curation) == Counter(
        {"curate_dataset": 2, "dataset_card": 1, **downstream}
    )
    # A training key: every method's training and what follows it, not the base model.
    beta = _variant(study, "train.beta", 0.01)
    assert planned_jobs(study, "--configfile", beta) == Counter(
        {"train": 5, "sample_eval": 8, "score": 8, "report": 1, "all": 1}
    )
    # Another training seed: the new runs and what follows them; the seed-0 runs stay.
    seeds = _variant(study, "train.seeds", [0, 1])
    assert planned_jobs(study, "--configfile", seeds) == Counter(
        {"train": 5, "sample_eval": 8, "score": 8, "report": 1, "all": 1}
    )
    # A report option: only the report.
    title = _variant(study, "report.title", "another title")
    assert planned_jobs(study, "--configfile", title) == Counter({"report": 1, "all": 1})


def test_bad_config_fails_before_any_job(study):
    bad = _variant(study, "dataset.source.generator.n_train", -1)
    result = snakemake(study, "-n", "--configfile", bad, check=False)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "dataset.source.generator.n_train" in message and "-1" in message


def test_everything_the_report_writes_is_a_declared_output(study):
    """Snakemake's summary lists every output of the DAG (directories whole): the report folder
    holds nothing else, so nothing in it can go stale unnoticed or survive a rerun."""
    summary = snakemake(study, *TINY, "--summary").stdout.splitlines()
    declared = {line.split("\t")[0] for line in summary[1:] if line.strip()}
    report_dir = study / RESULTS / "report"
    written = {str(path.relative_to(study)) for path in report_dir.rglob("*") if path.is_file()}
    undeclared = {
        path
        for path in written
        if path not in declared and not any(path.startswith(f"{d}/") for d in declared)
    }
    assert written and not undeclared, sorted(undeclared)
    assert any(path.startswith(f"{RESULTS}/report/curves/") for path in written)
