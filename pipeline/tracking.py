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
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow.tracking import MlflowClient  # slow import: only when tracking is on

    return MlflowClient(tracking_uri=tracking_uri)


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


@contextmanager
def stage_run(args: argparse.Namespace, stage_config: dict) -> Iterator[StageRun]:
    """One MLflow run around a stage's work, from the flags of :func:`add_arguments`.

    The run ends ``FINISHED`` on success and ``FAILED`` on an exception (which propagates).
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
    run = _retry(client.create_run, experiment.experiment_id, tags=tags, run_name=name)
    handle = StageRun(client, run.info.run_id)
    if args.run_id_file is not None:
        io.write_text(args.run_id_file, handle.run_id + "\n")
    try:
        handle.log_params(flatten(stage_config))
        yield handle
    except BaseException:
        _retry(client.set_terminated, handle.run_id, "FAILED")
        raise
    _retry(client.set_terminated, handle.run_id, "FINISHED")
