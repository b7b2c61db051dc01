"""MLflow tracking for stages: one run per job, tagged so that any run can be traced back.

Every stage CLI accepts the same optional flags (:func:`add_arguments`); without
``--mlflow-record`` (the JSON that ``mlflow_init`` writes) a stage runs untracked, so it can
be used by hand. A run is tagged with the rule name, the wildcards, the git commit and a hash
of the stage's config slice, and its id is written next to the stage's outputs
(``--run-id-file``).

Several jobs may log to one sqlite database at once. The experiment is created once by the
``mlflow_init`` rule before any of them starts (creating tables concurrently races), and
every write goes through :func:`_retry`, which backs off while sqlite reports a lock.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pipeline import io
from pipeline.config import config_hash

T = TypeVar("T")
# A resumable stage's record of its MLflow run, kept in its output folder beside the
# checkpoint and outside its declared outputs (which Snakemake deletes before a rerun).
RESUME_RUN_FILE = "mlflow_resume_run_id.txt"
# sqlite lock waits are short but several jobs can collide repeatedly: allow ~1 minute.
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered back-off while the database is locked."""
    for delay in RETRY_DELAYS_S:
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # MLflow wraps sqlalchemy's OperationalError variously
            if "locked" not in str(error).lower() and "busy" not in str(error).lower():
                raise
            time.sleep(delay * (1 + random.random()))
    return fn(*args, **kwargs)


def git_commit() -> str:
    """The checked-out commit (with ``-dirty`` if the tree has changes), or ``unknown``."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def _client(tracking_uri: str):
    """An MlflowClient; creating one opens (and may migrate) the database, so it is retried
    like every write while another job holds the sqlite lock."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow.tracking import MlflowClient  # slow import: only when tracking is on

    return _retry(MlflowClient, tracking_uri=tracking_uri)


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str) -> str:
    """Create the database and the experiment if needed; return the experiment id."""
    client = _client(tracking_uri)
    existing = _retry(client.get_experiment_by_name, name)
    if existing is not None:
        return existing.experiment_id
    location = Path(artifact_root).resolve().as_uri()
    # Tagged as model training so that the UI opens on the runs table, not the GenAI view.
    tags = {"mlflow.experimentKind": "custom_model_development"}
    return _retry(client.create_experiment, name, artifact_location=location, tags=tags)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The tracking flags every stage CLI accepts."""
    group = parser.add_argument_group("tracking (optional)")
    group.add_argument(
        "--mlflow-record",
        type=Path,
        default=None,
        help="JSON written by mlflow_init (tracking URI and experiment); omit to run untracked",
    )
    group.add_argument("--rule", default=None, help="Snakemake rule name (run tag)")
    group.add_argument("--wildcards", default="{}", help="JSON of the job's wildcards (run tag)")
    group.add_argument("--run-id-file", type=Path, default=None, help="where to write the run id")


class StageRun:
    """A handle a stage logs through; every method is a no-op when tracking is off."""

    def __init__(self, client=None, run_id: str | None = None):
        self._client = client
        self.run_id = run_id

    def log_params(self, params: dict[str, Any]) -> None:
        if self._client is None:
            return
        from mlflow.entities import Param

        batch = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        _retry(self._client.log_batch, self.run_id, params=batch)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in sorted(metrics.items())]
        _retry(self._client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._client is not None:
            _retry(self._client.log_artifact, self.run_id, str(path), artifact_path)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``, for logging a config slice as params."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): obj}


def _resumable_run(client, resume_file: Path | None, experiment_id: str, tags: dict) -> str | None:
    """The id in ``resume_file`` if it names an unfinished run of this experiment with the
    same rule, wildcards and config hash (a stage killed mid-way); else None."""
    if resume_file is None or not resume_file.is_file():
        return None
    run_id = resume_file.read_text(encoding="utf-8").strip()
    try:
        run = _retry(client.get_run, run_id)
    except Exception:  # deleted, or from another database
        return None
    same = all(run.data.tags.get(key) == tags[key] for key in ("rule", "wildcards", "config_hash"))
    if run.info.experiment_id != experiment_id or run.info.status == "FINISHED" or not same:
        return None
    return run_id


@contextmanager
def stage_run(
    args: argparse.Namespace, stage_config: dict, resume_file: Path | None = None
) -> Iterator[StageRun]:
    """One MLflow run around a stage's work, from the flags of :func:`add_arguments`.

    The run ends ``FINISHED`` on success and ``FAILED`` on an exception (which propagates),
    the run-id file's write included. With ``resume_file`` (kept beside a resumable stage's
    checkpoint, outside its declared outputs) a rerun after a kill continues the unfinished
    run that the file names, so one run holds the whole curve, and a new run's id is
    recorded there.
    """
    if args.mlflow_record is None:
        yield StageRun()
        return
    if not args.mlflow_record.is_file():
        raise SystemExit(
            f"--mlflow-record {args.mlflow_record}: no such file; run pipeline.mlflow_init first"
        )
    record = json.loads(args.mlflow_record.read_text(encoding="utf-8"))
    client = _client(record["tracking_uri"])
    experiment = _retry(client.get_experiment_by_name, record["experiment"])
    if experiment is None:
        raise SystemExit(
            f"experiment {record['experiment']!r} does not exist in {record['tracking_uri']}; "
            "run the mlflow_init rule (python -m pipeline.mlflow_init) first"
        )
    wildcards = json.loads(args.wildcards)
    tags = {
        "rule": args.rule or "manual",
        "wildcards": json.dumps(wildcards, sort_keys=True),
        "git_commit": git_commit(),
        "config_hash": config_hash(stage_config),
        **{f"wildcard.{k}": str(v) for k, v in wildcards.items()},
    }
    name = "_".join([args.rule or "manual", *map(str, wildcards.values())])
    resumed = _resumable_run(client, resume_file, experiment.experiment_id, tags)
    if resumed is not None:
        _retry(client.update_run, resumed, "RUNNING")
        handle = StageRun(client, resumed)
        print(f"continuing MLflow run {resumed}")
    else:
        run = _retry(client.create_run, experiment.experiment_id, tags=tags, run_name=name)
        handle = StageRun(client, run.info.run_id)
    try:
        if resume_file is not None and resumed is None:
            io.write_text(resume_file, handle.run_id + "\n")
        if args.run_id_file is not None:
            io.write_text(args.run_id_file, handle.run_id + "\n")
        if resumed is None:
            handle.log_params(flatten(stage_config))
        yield handle
    except BaseException:
        _retry(client.set_terminated, handle.run_id, "FAILED")
        raise
    _retry(client.set_terminated, handle.run_id, "FINISHED")
