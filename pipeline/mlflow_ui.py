"""Serve the MLflow UI of the study's database on loopback and print where its runs are.

    python -m pipeline.mlflow_ui [--db results/mlflow.db] [--port 5000]

MLflow 3's UI opens an experiment in its GenAI layout (traces, an "Overview" page) unless
the page's address asks for the machine-learning layout: version 3.17 decides the layout
from a ``workflowType`` toggle (URL parameter, else the browser's stored choice, GenAI by
default) and no longer reads the experiment's ``mlflow.experimentKind`` tag. So this prints,
per experiment, the address of its runs table in the machine-learning layout
(:func:`runs_url`), then runs ``mlflow ui`` bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pipeline.tracking import _client


def runs_url(base: str, experiment_id: str) -> str:
    """The runs table of one experiment, in the machine-learning layout."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("results/mlflow.db"), help="the study's sqlite file")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    if not args.db.is_file():
        raise SystemExit(f"--db {args.db}: no such file; run the study first (make study)")
    uri = f"sqlite:///{args.db}"
    base = f"http://127.0.0.1:{args.port}"
    experiments = [e for e in _client(uri).search_experiments() if e.name != "Default"]
    print("MLflow UI: the runs of each experiment (filter with tags.rule = 'train' to compare the methods):")
    for experiment in experiments:
        print(f"  {experiment.name}: {runs_url(base, experiment.experiment_id)}")
    sys.stdout.flush()
    mlflow = Path(sys.executable).parent / "mlflow"
    command = [str(mlflow), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.port)]
    os.execv(command[0], command)
    return 0  # not reached: the UI replaces this process


if __name__ == "__main__":
    sys.exit(main())
