"""The comparison's jobs without Snakemake: every method x training seed, then evaluation.

    python bench/multiseed.py --seeds 0,1,2 --base-model DIR --train T.parquet --test T.parquet \
        --out DIR [--set train.iterations=8] [--jobs 4] [--device cuda]

For a machine that has the project's Python packages but neither Snakemake nor MLflow (the
lent GPU machine): it runs the stage commands the workflow's rules run — ``pipeline.stages.train``
per method and seed, then ``pipeline.stages.sample_eval`` and ``pipeline.stages.score`` for the base model,
every run and every equal-NFE snapshot — with the same config slices (``config.yaml`` after
the ``--set`` overrides), untracked, ``--jobs`` at a time, into
``OUT/train/<method>/seed<N>/`` and ``OUT/eval/<model>/``. ``--report DIR`` instead runs
``pipeline.stages.report`` into DIR on the outputs of one or more such folders (``--out`` repeated:
their runs together, the base model's evaluation from the first), with the study's report
config and ``--base-card`` (the base model card's figures.json) for the z units.
A job's output is reused when it exists, so a rerun continues. ``--pack FILE`` writes the
outputs as one ``.tar.gz`` without weights and checkpoints and with the evaluation images of
the first ``--pack-images`` test prompts only (what the report's grid shows), to bring back.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.learning_settings import overridden, train_flags  # noqa: E402
from pipeline.config.files import canonical_json, read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.config.types import StudyConfig  # noqa: E402
from pipeline.workflow import stage_params  # noqa: E402


def run_all(commands: list[tuple[str, list[str], Path]], jobs: int) -> list[str]:
    """Run ``(name, argv, log)`` commands ``jobs`` at a time; the names of those that failed."""
    pending, running, failed = list(commands), [], []
    while pending or running:
        while pending and len(running) < jobs:
            name, argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            handle = open(log, "w")  # noqa: SIM115 (closed when the job ends)
            running.append((name, subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT), handle))
            print(f"start {name}", flush=True)
        time.sleep(0.5)
        for item in list(running):
            name, process, handle = item
            if process.poll() is not None:
                handle.close()
                running.remove(item)
                print(f"{'done' if process.returncode == 0 else 'FAILED'} {name}", flush=True)
                if process.returncode:
                    failed.append(name)
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--base-model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--out", type=Path, action="append", required=True)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--score-workers", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--pack", type=Path, default=None, help="a .tar.gz of the outputs to bring back")
    parser.add_argument("--pack-images", type=int, default=8)
    parser.add_argument("--pack-only", action="store_true", help="pack what exists, run nothing")
    parser.add_argument("--report", type=Path, default=None, help="run the report of --out folders here")
    parser.add_argument("--base-card", type=Path, default=None)
    args = parser.parse_args(argv)
    cfg = load(overridden(read_yaml(args.config), args.assignments), source=f"{args.config}")
    if args.report:
        return report(cfg, args.out, args.base_card, args.report)
    args.out = args.out[0]
    if args.pack_only:
        pack(args.out, args.pack, args.pack_images)
        return 0

    seeds = [int(s) for s in args.seeds.split(",")]
    threads = max(1, (os.cpu_count() or 2) // args.jobs)
    python = [sys.executable, "-u", "-m"]
    device = ["--device", args.device] if args.device else []
    runs = {f"{m}/seed{s}": (m, s) for m in cfg.methods for s in seeds}

    trains = [
        (
            f"train {run}",
            [*python, "pipeline.stages.train", "--method", method, "--train", str(args.train)]
            + ["--base-model", str(args.base_model), *train_flags(cfg, method, seed)]
            + ["--out-dir", str(args.out / "train" / run), "--threads", str(threads), *device],
            args.out / "logs" / "train" / f"{run}.log",
        )
        for run, (method, seed) in runs.items()
        if not (args.out / "train" / run / "train_info.json").is_file()
    ]
    failed = run_all(trains, args.jobs)

    reference = cfg.evaluation.equal_nfe_reference
    models = {"base": None, **{run: seed for run, (_, seed) in runs.items()}}
    if reference:
        models |= {f"{run}/equal_nfe": s for run, (m, s) in runs.items() if not cfg.methods[m].branch_steps}
    evals = []
    for model, seed in models.items():
        out = args.out / "eval" / model
        if (out / "rewards.parquet").is_file():
            continue
        run = model.removesuffix("/equal_nfe")
        if model == "base":
            weights = []
        elif model.endswith("/equal_nfe"):
            own = args.out / "train" / run
            ref = args.out / "train" / f"{reference}/seed{seed}" / "metrics.parquet"
            weights = ["--snapshots", str(own / "snapshots"), "--own-metrics", str(own / "metrics.parquet")]
            weights += ["--match-nfe-of", str(ref)]
        else:
            weights = ["--weights", str(args.out / "train" / run / "weights.safetensors")]
        sample = [*python, "pipeline.stages.sample_eval", "--model", model]
        sample += ["--base-model", str(args.base_model)]
        sample += [
            *weights,
            "--test",
            str(args.test),
            "--config-json",
            canonical_json(stage_params.sample_eval_params(cfg, seed)),
        ]
        sample += ["--out-dir", str(out), "--threads", str(threads), *device]
        score = [*python, "pipeline.stages.score", "--samples", str(out / "samples.parquet")]
        score += ["--out", str(out / "rewards.parquet"), "--rewards", ",".join(cfg.rewards.score)]
        score += ["--settings-json", canonical_json(stage_params.score_params(cfg)["settings"])]
        score += ["--workers", str(args.score_workers)]
        chained = ["bash", "-c", f"{shlex.join(sample)} && {shlex.join(score)}"]
        evals.append((f"evaluate {model}", chained, args.out / "logs" / "eval" / f"{model}.log"))
    failed += run_all(evals, args.jobs)

    print(f"failed: {failed}" if failed else "every job finished")
    if args.pack:
        pack(args.out, args.pack, args.pack_images)
    return 1 if failed else 0


def report(cfg: StudyConfig, outs: list[Path], base_card: Path | None, target: Path) -> int:
    """``pipeline.stages.report`` on the runs of every folder in ``outs`` (the base model's from the
    first), with the report rule's config slices."""
    flags = []
    models = {"base": outs[0] / "eval" / "base"}
    for out in outs:
        for info in sorted(out.glob("train/*/seed*/train_info.json")):
            run = str(info.parent.relative_to(out / "train"))
            for flag, name in (("--metrics", "metrics.parquet"), ("--probe", "probe.parquet")):
                flags += [flag, f"{run}={info.parent / name}"]
            flags += ["--train-info", f"{run}={info}"]
        for rewards in sorted(out.glob("eval/*/seed*/**/rewards.parquet")):
            models[str(rewards.parent.relative_to(out / "eval"))] = rewards.parent
    for model, folder in models.items():
        flags += ["--rewards", f"{model}={folder / 'rewards.parquet'}"]
        flags += ["--samples", f"{model}={folder / 'samples.parquet'}"]
    if base_card:
        flags += ["--base-card", str(base_card)]
    stage_json = canonical_json(stage_params.report_params(cfg))
    command = [sys.executable, "-m", "pipeline.stages.report", *flags, "--config-json", stage_json]
    return subprocess.run([*command, "--out-dir", str(target)], check=False).returncode


def pack(out: Path, target: Path, images: int) -> None:
    """``out`` as a .tar.gz: no .safetensors, evaluation images of the first ``images`` lines."""
    import pandas as pd

    keep: set[str] = set()
    for samples in out.glob("eval/**/samples.parquet"):
        table = pd.read_parquet(samples)
        lines = list(dict.fromkeys(table.line_id))[:images]
        keep |= {str(samples.parent / p) for p in table[table.line_id.isin(lines)].image_path}
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(out.rglob("*")):
            if path.is_dir() or path.suffix == ".safetensors":
                continue
            if path.suffix == ".png" and str(path) not in keep:
                continue
            tar.add(path, arcname=str(path.relative_to(out.parent)))
    print(f"packed {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    sys.exit(main())
