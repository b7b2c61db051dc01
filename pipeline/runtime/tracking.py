"""MLflow tracking for stages: one run per job, tagged so that any run can be traced back.

Every stage CLI accepts the same optional flags (:func:`add_arguments`); without
``--mlflow-record`` (the JSON that ``mlflow_init`` writes) a stage runs untracked, so it can
be used by hand. A run is tagged with the rule name, the wildcards, the git commit and a hash
of the stage's config slice, and its id is written next to the stage's outputs
(``--run-id-file``).

Several jobs may log to one sqlite database at once. The experiment is created once by the
``mlflow_init`` rule before any of them starts, under a file lock beside the database (two
studies starting at once on a new database would otherwise race to create its tables), and
every write goes through :func:`_retry`, which backs off while sqlite reports a lock. A
database that is not an MLflow one, or stays locked past the retries, stops the stage naming
the file and what to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from pipeline.config.files import config_hash
from pipeline.runtime import io

T = TypeVar("T")
# A resumable stage's record of its MLflow run, kept in its output folder beside the
# checkpoint and outside its declared outputs (which Snakemake deletes before a rerun).
RESUME_RUN_FILE = "mlflow_resume_run_id.txt"
# sqlite lock waits are short but several jobs can collide repeatedly: allow ~1 minute.
RETRY_DELAYS_S = (0.1, 0.2, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0)


class DatabaseLocked(RuntimeError):
    """The tracking database stayed locked through every retry."""


class DatabaseUnwritable(RuntimeError):
    """The tracking database refused a write: a read-only file or folder, or a full disk."""


# sqlite's messages (through SQLAlchemy and MLflow) for a database it cannot write, and what
# each means for the user.
UNWRITABLE = {
    "attempt to write a readonly database": "is read-only (the file, or its folder, cannot be written)",
    "unable to open database file": "cannot be opened for writing (its folder is read-only or missing)",
    "database or disk is full": "cannot grow: the disk is full",
}


def _is_lock(error: Exception) -> bool:
    text = str(error).lower()
    return "locked" in text or "busy" in text


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn``, retrying with jittered back-off while the database is locked; still locked
    after the last retry is :class:`DatabaseLocked`."""
    waited = 0.0
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return fn(*args, **kwargs)
        except Exception as error:  # MLflow wraps sqlalchemy's OperationalError variously
            text = str(error).lower()
            problem = next((meaning for message, meaning in UNWRITABLE.items() if message in text), None)
            if problem is not None:
                raise DatabaseUnwritable(problem) from None
            if not _is_lock(error):
                raise
            if delay is None:
                first = str(error).strip().splitlines()[0][:200]
                raise DatabaseLocked(f"still locked after {waited:.0f} s of retries ({first})") from None
            pause = delay * (1 + random.random())
            time.sleep(pause)
            waited += pause
    raise AssertionError("unreachable")


def database_problem(tracking_uri: str, problem: str) -> SystemExit:
    """A stage-stopping error naming the tracking database and what to do about ``problem``."""
    path = tracking_uri.removeprefix("sqlite:///") if tracking_uri.startswith("sqlite:///") else tracking_uri
    if "locked" in problem:
        remedy = (
            "another process holds it (a stuck job, an `mlflow ui` writing to it): wait for it or stop it, "
            f"then rerun (fuser {path} lists the holders)"
        )
    elif "disk is full" in problem:
        remedy = f"free space on the disk that holds {path}, then rerun"
    elif "read-only" in problem or "for writing" in problem:
        remedy = (
            f"make {path} and its folder writable (chmod u+w), or set mlflow.tracking_uri to a file in a "
            "writable folder, then rerun"
        )
    else:
        remedy = (
            f"move {path} aside (it holds every run's records) or set mlflow.tracking_uri to another file, "
            "then rerun"
        )
    return SystemExit(f"MLflow database {path}: {problem}; {remedy}")


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
    like every write while another job holds the sqlite lock. A file that is not an MLflow
    database stops the stage naming it."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from mlflow.tracking import MlflowClient  # slow import: only when tracking is on

    try:
        client = _retry(MlflowClient, tracking_uri=tracking_uri)
        _retry(client.search_experiments, max_results=1)  # the schema is only read on first use
    except (DatabaseLocked, DatabaseUnwritable) as error:
        raise database_problem(tracking_uri, str(error)) from None
    except Exception as error:
        first = str(error).strip().splitlines()[0][:200]
        raise database_problem(tracking_uri, f"cannot be opened as an MLflow database ({first})") from None
    return client


@contextmanager
def _creation_lock(tracking_uri: str) -> Iterator[None]:
    """An exclusive lock on ``<database>.lock`` while the schema and experiment are created
    (sqlite only): concurrent creation of a new database's tables fails in alembic."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    lock_path = Path(tracking_uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_artifact_location(experiment, artifact_root: str, tracking_uri: str, record: Path | None) -> None:
    """Stop when ``experiment`` keeps its artifacts outside ``artifact_root`` (this project's
    ``mlflow.artifact_root``, relative to the folder the study runs in).

    MLflow stores an experiment's artifact location as an absolute path, so a database copied
    with its project still points at the original's folder, and a stage run in the copy
    would write its artifacts (the report, the model card) there."""
    expected = Path(artifact_root).resolve().as_uri()
    if experiment.artifact_location.rstrip("/") == expected.rstrip("/"):
        return
    path = tracking_uri.removeprefix("sqlite:///")
    stale = f"rm {path}" + (f" {record}" if record is not None else "")
    raise SystemExit(
        f"MLflow experiment {experiment.name!r} in {tracking_uri} keeps its artifacts in "
        f"{experiment.artifact_location}, not in this project's {expected} (mlflow.artifact_root "
        f"{artifact_root!r}): the database was copied from another project, and this stage would write "
        f"into that one. Nothing was written. To give this project its own experiment, `{stale}` and "
        "rerun (mlflow_init makes a new one; every stage then reruns once to log into it); to keep "
        f"writing there, set mlflow.artifact_root to {experiment.artifact_location.removeprefix('file://')}"
    )


def ensure_experiment(tracking_uri: str, name: str, artifact_root: str) -> str:
    """Create the database and the experiment if needed; return the experiment id. An existing
    experiment must keep its artifacts in ``artifact_root`` (:func:`check_artifact_location`)."""
    with _creation_lock(tracking_uri):
        client = _client(tracking_uri)
        try:
            existing = _retry(client.get_experiment_by_name, name)
            if existing is not None:
                check_artifact_location(existing, artifact_root, tracking_uri, None)
                return existing.experiment_id
            location = Path(artifact_root).resolve().as_uri()
            # Tagged as model training so that the UI opens on the runs table, not the GenAI view.
            tags = {"mlflow.experimentKind": "custom_model_development"}
            return _retry(client.create_experiment, name, artifact_location=location, tags=tags)
        except (DatabaseLocked, DatabaseUnwritable) as error:
            raise database_problem(tracking_uri, str(error)) from None


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


def _process_alive(host: str | None, pid: str | None) -> bool:
    """Whether the process a run was tagged with still runs (unknowable on another host: yes)."""
    if host is None or pid is None or not pid.isdigit():
        return False  # runs from before the tags: Snakemake's lock already rules out a twin
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_stale_runs(client, experiment_id: str, tags: dict, keep: str | None) -> list[str]:
    """Mark ``KILLED`` the runs of this job (same rule and wildcards) that MLflow still shows
    ``RUNNING`` though their process is gone: a job killed with SIGKILL (or a lost machine)
    never ended its run. ``keep``: the run a resumed stage continues. Returns the ids ended."""
    query = f"tags.rule = '{tags['rule']}' and attributes.status = 'RUNNING'"
    ended = []
    for run in _retry(client.search_runs, [experiment_id], query, max_results=1000):
        same_job = run.data.tags.get("wildcards") == tags["wildcards"]
        if not same_job or run.info.run_id == keep:
            continue
        if _process_alive(run.data.tags.get("host"), run.data.tags.get("pid")):
            continue
        _retry(
            client.set_tag,
            run.info.run_id,
            "ended_by",
            "a later attempt of the same job (its process was gone)",
        )
        _retry(client.set_terminated, run.info.run_id, "KILLED")
        ended.append(run.info.run_id)
    if ended:
        ids = ", ".join(ended)
        print(f"marked {len(ended)} earlier MLflow run(s) of this job KILLED (their process had gone): {ids}")
    return ended


@contextmanager
def stage_run(
    args: argparse.Namespace, stage_config: dict, resume_file: Path | None = None, runtime: dict | None = None
) -> Iterator[StageRun]:
    """One MLflow run around a stage's work, from the flags of :func:`add_arguments`.

    ``stage_config`` is logged as params and hashed into the ``config_hash`` tag; ``runtime``
    (time guards, workers: pipeline.workflow.stage_params) is logged under ``runtime.`` but not hashed,
    so that a run resumed after a changed time guard continues its MLflow run.

    The run ends ``FINISHED`` on success, ``KILLED`` on Ctrl-C and ``FAILED`` on another
    exception (which propagates),
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
            f"--mlflow-record {args.mlflow_record}: no such file; run pipeline.stages.mlflow_init first"
        )
    record = json.loads(args.mlflow_record.read_text(encoding="utf-8"))
    try:
        with _tracked(args, stage_config, resume_file, record, runtime or {}) as handle:
            yield handle
    except (DatabaseLocked, DatabaseUnwritable) as error:
        raise database_problem(record["tracking_uri"], str(error)) from None


@contextmanager
def _tracked(
    args: argparse.Namespace, stage_config: dict, resume_file: Path | None, record: dict, runtime: dict
):
    """:func:`stage_run` once tracking is on (``record``: the mlflow_init record)."""
    client = _client(record["tracking_uri"])
    experiment = _retry(client.get_experiment_by_name, record["experiment"])
    if experiment is None:
        raise SystemExit(
            f"experiment {record['experiment']!r} does not exist in {record['tracking_uri']}; "
            "run the mlflow_init rule (python -m pipeline.stages.mlflow_init) first"
        )
    if "artifact_root" in record:  # records before 2026-12-04 lack it
        check_artifact_location(
            experiment, record["artifact_root"], record["tracking_uri"], args.mlflow_record
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
    end_stale_runs(client, experiment.experiment_id, tags, keep=resumed)
    tags |= {"host": socket.gethostname(), "pid": str(os.getpid())}
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
            handle.log_params(flatten(stage_config | ({"runtime": runtime} if runtime else {})))
        yield handle
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        with contextlib.suppress(DatabaseLocked, DatabaseUnwritable):  # the stage's own error matters more
            _retry(client.set_terminated, handle.run_id, status)
        raise
    _retry(client.set_terminated, handle.run_id, "FINISHED")
