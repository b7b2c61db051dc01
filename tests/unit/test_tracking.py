"""MLflow tracking: one run per stage with its tags, and parallel jobs on one sqlite file."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.runtime import tracking
from pipeline.stages import mlflow_init
from tests.conftest import REPO

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


def _killed_job(record: str, folder: str) -> None:
    """A stage that logs three steps and is killed (SIGKILL: no cleanup, the run stays RUNNING)."""
    import os
    import signal

    args = _args(Path(record), "train", {"method": "m"}, Path(folder) / "run.txt")
    with tracking.stage_run(args, {"lr": 1}, resume_file=Path(folder) / tracking.RESUME_RUN_FILE) as run:
        for step in range(3):
            run.log_metrics({"loss": float(step)}, step=step)
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_resumed_stage_continues_its_killed_run(record, tmp_path):
    process = multiprocessing.get_context("spawn").Process(
        target=_killed_job, args=(str(record), str(tmp_path))
    )
    process.start()
    process.join()
    assert process.exitcode == -9
    killed = (tmp_path / tracking.RESUME_RUN_FILE).read_text().strip()
    args = _args(record, "train", {"method": "m"}, tmp_path / "run.txt")
    with tracking.stage_run(args, {"lr": 1}, resume_file=tmp_path / tracking.RESUME_RUN_FILE) as run:
        for step in range(3, 5):
            run.log_metrics({"loss": float(step)}, step=step)
    assert run.run_id == killed
    client = tracking._client(json.loads(record.read_text())["tracking_uri"])
    finished = client.get_run(killed)
    assert finished.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(killed, "loss")] == [0, 1, 2, 3, 4]
    assert len(client.search_runs([finished.info.experiment_id])) == 1
    # another config (or a finished run) starts a new run
    with tracking.stage_run(args, {"lr": 2}, resume_file=tmp_path / tracking.RESUME_RUN_FILE) as other:
        pass
    assert other.run_id != killed
    assert (tmp_path / tracking.RESUME_RUN_FILE).read_text().strip() == other.run_id


def test_unwritable_run_id_file_fails_the_run(record, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    args = _args(record, "x", {}, blocker / "run.txt")  # a file where a folder should be
    with pytest.raises(OSError), tracking.stage_run(args, {}):
        pytest.fail("the stage ran without its run-id file")
    client = tracking._client(json.loads(record.read_text())["tracking_uri"])
    (run,) = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert run.info.status == "FAILED"


def test_client_creation_waits_for_a_locked_database(record, tmp_path, monkeypatch):
    import mlflow.tracking

    real, calls = mlflow.tracking.MlflowClient, {"n": 0}

    def locked_twice(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", locked_twice)
    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.01,) * 5)
    with tracking.stage_run(_args(record, "x", {}, tmp_path / "run.txt"), {}) as run:
        run.log_metrics({"x": 1.0})
    assert calls["n"] == 3


def _init(uri: str, experiment: str, out: Path) -> int:
    return mlflow_init.main(
        [
            "--tracking-uri",
            uri,
            "--experiment",
            experiment,
            "--artifact-root",
            str(out.parent),
            "--out",
            str(out),
        ]
    )


def test_a_file_that_is_not_an_mlflow_database_is_named_with_the_remedy(tmp_path):
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"garbage, not sqlite" * 100)
    with pytest.raises(SystemExit, match=rf"MLflow database {db}: cannot be opened .*; move {db} aside"):
        _init(f"sqlite:///{db}", "x", tmp_path / "e.json")


def test_a_lock_held_past_the_retries_is_named_with_the_remedy(tmp_path, record, monkeypatch):
    import sqlite3

    monkeypatch.setattr(tracking, "RETRY_DELAYS_S", (0.05, 0.05))
    db = tmp_path / "mlflow.db"
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # as a stuck writer would
    try:
        with pytest.raises(SystemExit, match=rf"MLflow database {db}: still locked after .*fuser {db}"):
            with tracking.stage_run(_args(record, "score", {}, tmp_path / "id.txt"), {"a": 1}):
                pass
    finally:
        holder.rollback()
        holder.close()


def _init_in_process(args: tuple[str, str, str]) -> int:
    uri, experiment, out = args
    try:
        return _init(uri, experiment, Path(out))
    except SystemExit as error:
        print(error)
        return 1


def test_two_studies_starting_at_once_on_a_new_database(tmp_path):
    """Both mlflow_init jobs create the schema of one new sqlite file at the same moment: the
    creation lock serialises them (without it, one failed in alembic). Three rounds."""
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        jobs = [(uri, f"study{i}", str(tmp_path / f"e{attempt}_{i}.json")) for i in range(2)]
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            assert pool.map(_init_in_process, jobs) == [0, 0]


@pytest.mark.parametrize(
    ("sqlite_message", "expected"),
    [
        ("attempt to write a readonly database", r"is read-only .*; make {db} and its folder writable"),
        (
            "database or disk is full",
            r"cannot grow: the disk is full; free space on the disk that holds {db}",
        ),
    ],
)
def test_a_database_that_refuses_writes_is_named_in_one_line_with_the_remedy(
    tmp_path, record, monkeypatch, sqlite_message, expected
):
    """MLflow wraps sqlite's error in a traceback of about 200 lines that names no file. As root
    (CI) a chmod does not stop sqlite writing, so the write fails as MLflow reports it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    def refused(*args, **kwargs):
        raise MlflowException(
            f"(sqlite3.OperationalError) {sqlite_message}\n[SQL: INSERT INTO runs ...]\n" * 20
        )

    monkeypatch.setattr(MlflowClient, "create_run", refused)
    db = tmp_path / "mlflow.db"
    with pytest.raises(SystemExit) as caught:
        with tracking.stage_run(_args(record, "score", {}, tmp_path / "id.txt"), {"a": 1}):
            pytest.fail("the stage ran without its MLflow run")
    message = str(caught.value)
    assert re.search(rf"MLflow database {db}: " + expected.format(db=db), message), message
    assert len(message.splitlines()) == 1


def test_a_copied_project_stops_before_writing_into_the_originals_artifacts(tmp_path, monkeypatch):
    """MLflow keeps an experiment's artifact folder as an absolute path: in a copy of a project
    the report stage wrote index.html into the original's results/mlartifacts."""
    original = tmp_path / "original"
    (original / "results").mkdir(parents=True)
    monkeypatch.chdir(original)
    init = ["--tracking-uri", "sqlite:///results/mlflow.db", "--experiment", "study"]
    init += ["--artifact-root", "results/mlartifacts", "--out", "results/experiment.json"]
    assert mlflow_init.main(init) == 0
    args = _args(Path("results/experiment.json"), "report", {}, Path("results/id.txt"))
    with tracking.stage_run(args, {"a": 1}) as run:  # the original logs into its own folder
        (original / "page.html").write_text("<p>original</p>")
        run.log_artifact(original / "page.html")
    before = sorted(p.relative_to(original) for p in (original / "results" / "mlartifacts").rglob("*"))

    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    with pytest.raises(SystemExit) as caught:
        with tracking.stage_run(args, {"a": 1}):
            pytest.fail("the stage ran")
    message = str(caught.value)
    assert f"keeps its artifacts in {(original / 'results' / 'mlartifacts').as_uri()}" in message
    assert f"not in this project's {(copy / 'results' / 'mlartifacts').as_uri()}" in message
    assert "rm results/mlflow.db results/experiment.json" in message
    with pytest.raises(SystemExit, match="the database was copied from another project"):
        mlflow_init.main(init)
    after = sorted(p.relative_to(original) for p in (original / "results" / "mlartifacts").rglob("*"))
    assert after == before  # nothing was written into the original

    for stale in ("results/mlflow.db", "results/experiment.json"):  # the remedy the message gives
        (copy / stale).unlink()
    # A new process, as a Snakemake job is: this one keeps the copied database's engine cached.
    command = [sys.executable, "-m", "pipeline.stages.mlflow_init", *init]
    assert subprocess.run(command, cwd=copy, capture_output=True, text=True).returncode == 0
    record = json.loads((copy / "results" / "experiment.json").read_text())
    assert record["artifact_root"] == "results/mlartifacts"


HANGING_STAGE = """
import sys, time
from pathlib import Path
from tests.unit.test_tracking import _args
from pipeline.runtime import tracking
with tracking.stage_run(_args(Path(sys.argv[1]), "score", {"model": "base"}, Path(sys.argv[2])), {"a": 1}):
    time.sleep(600)
"""


def test_a_run_left_running_by_a_kill_9_is_marked_killed_by_the_next_attempt(record, tmp_path):
    from mlflow.tracking import MlflowClient

    first_id = tmp_path / "first.txt"
    killed = subprocess.Popen([sys.executable, "-c", HANGING_STAGE, str(record), str(first_id)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not first_id.is_file() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.1)
    killed.kill()  # SIGKILL: nothing ends its MLflow run
    killed.wait()
    client = MlflowClient(json.loads(record.read_text())["tracking_uri"])
    stale = first_id.read_text().strip()
    assert client.get_run(stale).info.status == "RUNNING"
    other = _args(record, "score", {"model": "flow_grpo"}, tmp_path / "other.txt")
    with tracking.stage_run(other, {"a": 1}):  # another job leaves it alone
        pass
    assert client.get_run(stale).info.status == "RUNNING"
    with tracking.stage_run(_args(record, "score", {"model": "base"}, tmp_path / "second.txt"), {"a": 1}):
        pass
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run((tmp_path / "second.txt").read_text().strip()).info.status == "FINISHED"
