"""MLflow tracking: one run per stage with its tags, and parallel jobs on one sqlite file."""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

import pytest

from pipeline import mlflow_init, tracking

N_PROCESSES = 4
STEPS = 15


def _args(record: Path, rule: str, wildcards: dict, run_id_file: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tracking.add_arguments(parser)
    return parser.parse_args(
        [
            "--mlflow-record",
            str(record),
            "--rule",
            rule,
            "--wildcards",
            json.dumps(wildcards),
            "--run-id-file",
            str(run_id_file),
        ]
    )


@pytest.fixture
def record(tmp_path) -> Path:
    out = tmp_path / "experiment.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert (
        mlflow_init.main(
            [
                "--tracking-uri",
                uri,
                "--experiment",
                "test",
                "--artifact-root",
                str(tmp_path / "art"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return out


def _log_one_job(record: str, index: int, folder: str) -> str:
    args = _args(Path(record), "worker", {"index": index}, Path(folder) / f"run_{index}.txt")
    with tracking.stage_run(args, {"index": index}) as run:
        for step in range(STEPS):
            run.log_metrics({"loss": 1.0 / (step + 1), "index": index}, step=step)
    return run.run_id


def test_parallel_jobs_all_log(record, tmp_path):
    context = multiprocessing.get_context("spawn")
    with context.Pool(N_PROCESSES) as pool:
        run_ids = pool.starmap(_log_one_job, [(str(record), i, str(tmp_path)) for i in range(N_PROCESSES)])
    client = tracking._client(json.loads(record.read_text())["tracking_uri"])
    for index, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["rule"] == "worker"
        assert run.data.tags["wildcard.index"] == str(index)
        assert run.data.tags["config_hash"] == tracking.config_hash({"index": index})
        assert "git_commit" in run.data.tags
        assert len(client.get_metric_history(run_id, "loss")) == STEPS
        assert (tmp_path / f"run_{index}.txt").read_text().strip() == run_id


def test_failed_stage_marks_run_failed(record, tmp_path):
    args = _args(record, "boom", {}, tmp_path / "run.txt")
    with pytest.raises(RuntimeError), tracking.stage_run(args, {}):
        raise RuntimeError("stage failed")
    client = tracking._client(json.loads(record.read_text())["tracking_uri"])
    run_id = (tmp_path / "run.txt").read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"


def test_untracked_without_record():
    parser = argparse.ArgumentParser()
    tracking.add_arguments(parser)
    with tracking.stage_run(parser.parse_args([]), {}) as run:
        run.log_metrics({"x": 1.0})
    assert run.run_id is None


def test_missing_record_is_a_clear_error(tmp_path):
    args = _args(tmp_path / "none.json", "x", {}, tmp_path / "r.txt")
    with pytest.raises(SystemExit, match="none.json: no such file"), tracking.stage_run(args, {}):
        pass


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}
