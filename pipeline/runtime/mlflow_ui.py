"""Serve the MLflow UI of the study's database on loopback and print where its runs are.

    python -m pipeline.runtime.mlflow_ui [--db results/mlflow.db] [--port 5000]

MLflow 3's UI opens an experiment in its GenAI layout (traces, an "Overview" page) unless
the page's address asks for the machine-learning layout: version 3.17 decides the layout
from a ``workflowType`` toggle (URL parameter, else the browser's stored choice, GenAI by
default) and no longer reads the experiment's ``mlflow.experimentKind`` tag. So this prints,
per experiment, the address of its runs table in the machine-learning layout
(:func:`runs_url`), then runs ``mlflow ui`` bound to 127.0.0.1.

The server (``mlflow ui`` and the worker processes it starts) runs in a process group of its
own, which this command stops when it ends: on Ctrl-C, on SIGTERM or SIGHUP, and when its own
parent dies (``make`` killed with SIGKILL; Linux's parent-death signal). The group's id is kept
in ``<db folder>/mlflow_ui.pgid``; if this command itself is killed with SIGKILL, nothing can
clean up after it, and ``make ui-stop`` (``python -m pipeline.runtime.mlflow_ui --stop``) stops the
group from that file.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pipeline.runtime.tracking import _client

# prctl option: the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def runs_url(base: str, experiment_id: str) -> str:
    """The runs table of one experiment, in the machine-learning layout."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("results/mlflow.db"), help="the study's sqlite file")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--stop", action="store_true", help="stop the UI recorded beside --db, then exit")
    args = parser.parse_args(argv)
    if args.stop:
        return stop_recorded(args.db)
    if not args.db.is_file():
        raise SystemExit(f"--db {args.db}: no such file; run the study first (make study)")
    check_free(args.port, pgid_file(args.db))
    uri = f"sqlite:///{args.db}"
    base = f"http://127.0.0.1:{args.port}"
    experiments = [e for e in _client(uri).search_experiments() if e.name != "Default"]
    print("MLflow UI: the runs of each experiment (filter with tags.rule = 'train' to compare the methods):")
    for experiment in experiments:
        print(f"  {experiment.name}: {runs_url(base, experiment.experiment_id)}")
    sys.stdout.flush()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    return serve(command, pgid_file(args.db))


def pgid_file(db: Path) -> Path:
    return db.parent / "mlflow_ui.pgid"


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def recorded_group(record: Path) -> int | None:
    """The process group that ``record`` names, if it is still running."""
    try:
        pgid = int(record.read_text().strip())
        os.killpg(pgid, 0)
    except (OSError, ValueError):
        return None
    return pgid


def check_free(port: int, record: Path) -> None:
    """Stop before starting anything when a UI recorded beside the database still runs (a
    second one would overwrite its record, and ``make ui-stop`` would lose it) or when
    ``port`` on 127.0.0.1 is taken (the printed addresses would point at another server)."""
    running = recorded_group(record)
    if running is not None:
        raise SystemExit(
            f"an MLflow UI of this database already runs (process group {running}, recorded in {record}): "
            "use it, or stop it with make ui-stop first"
        )
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            raise SystemExit(
                f"port {port} on 127.0.0.1 is in use ({error.strerror}): another server answers there; "
                "pick a free one, e.g. make ui UI_PORT=5001"
            ) from None


def serve(command: list[str], record: Path) -> int:
    """Run ``command`` in a new process group, recorded in ``record``; stop the whole group
    when this process ends or is told to, and return the server's exit status.

    The record is opened before the server starts: in a read-only folder nothing starts (a
    server started first would be left running without a record when writing it failed)."""
    _die_with_parent()
    try:
        handle = record.open("w", encoding="utf-8")
    except OSError as error:
        raise SystemExit(
            f"cannot write the UI's process record {record} ({error.strerror}): nothing was started; "
            "make its folder writable, or serve a copy of the database from a writable folder (--db)"
        ) from None
    with handle:
        server = subprocess.Popen(command, start_new_session=True)
        handle.write(f"{server.pid}\n")

    def stop(signum=None, frame=None) -> None:
        stop_group(server.pid)
        if signum is not None:
            raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        return server.wait()
    finally:
        stop()
        with contextlib.suppress(OSError):  # only its own record, never another UI's
            if record.read_text().strip() == str(server.pid):
                record.unlink()


def stop_group(pgid: int, grace_s: float = 10.0) -> bool:
    """SIGTERM process group ``pgid``, SIGKILL what is left after ``grace_s``; whether it existed."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def stop_recorded(db: Path) -> int:
    """``--stop``: stop the server group recorded beside ``db``."""
    record = pgid_file(db)
    if not record.is_file():
        print(f"no MLflow UI recorded in {record}")
        return 0
    pgid = int(record.read_text().strip())
    print(
        f"stopped MLflow UI process group {pgid}" if stop_group(pgid) else f"process group {pgid} had ended"
    )
    record.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
