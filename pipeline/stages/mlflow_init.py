"""Stage ``mlflow_init``: create the tracking database and the study's experiment.

    python -m pipeline.stages.mlflow_init --tracking-uri sqlite:///results/mlflow.db \
        --experiment NAME --artifact-root results/mlartifacts --out experiment.json

Runs once before any parallel job, because creating the sqlite schema from several
processes at once races.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.runtime import io
from pipeline.runtime.tracking import ensure_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--artifact-root", required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON record of the experiment")
    args = parser.parse_args(argv)

    if args.tracking_uri.startswith("sqlite:///"):
        Path(args.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    experiment_id = ensure_experiment(args.tracking_uri, args.experiment, args.artifact_root)
    io.write_json(
        args.out,
        {
            "tracking_uri": args.tracking_uri,
            "experiment": args.experiment,
            "experiment_id": experiment_id,
            "artifact_root": args.artifact_root,
        },
    )
    print(f"experiment {args.experiment!r} (id {experiment_id}) at {args.tracking_uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
