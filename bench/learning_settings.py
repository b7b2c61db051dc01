"""Which training settings learn? Train methods from the study's base model and print trends.

    .venv/bin/python bench/learning_settings.py --label large --methods flow_grpo,multi_grpo \
        --set train.iterations=7 --set train.guidance=1 [--seeds 0,1,2] [--parallel] [--evaluate]

Each method runs ``python -m pipeline.stages.train`` exactly as the workflow's train rule does
(the config's ``train``, ``sampling``, ``rewards`` and ``model`` slices, after the ``--set``
overrides, dotted keys with YAML values), on the base model the study already pretrained
(``results/<study>/base_model``, or ``--base-model``), once per training seed in ``--seeds``
(default ``train.seed``), writing to ``results/bench/learning/<label>/<method>/seed<N>``.
Then it prints, per method, the iterations and median seconds per iteration, the change of
a line fitted to the rollouts' per-iteration mean rewards over the run with its standard
error (the report's trend), and the fixed probe batch's rewards before and after training.
``--parallel`` trains the runs at once, the threads split between them. ``--evaluate``
then samples the test split with every trained run and the base model exactly as the
study's ``sample_eval`` and ``score`` stages do (the base model's once per base model and
evaluation config, kept in ``results/bench/learning/base-<hash>``, the hash over the base's
weights and the evaluation config) and prints each run's test gain over the base model,
paired per prompt (mean ± standard error over prompts), for the mixed reward and each reward;
then per method, across the seeds, the report's outcome measures (z per reward in units of
the base model card's within-group spreads, the balanced gain B and the worst reward W:
mean ± standard error across seeds, B's mean in units of that standard error, the
acceptance scale of issue #24, and each seed's B with their SD).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.files import canonical_json, config_hash, read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.config.types import StudyConfig  # noqa: E402
from pipeline.reporting.analysis import (
    outcome_spreads,  # noqa: E402
    standardised_gains,  # noqa: E402
)
from pipeline.reporting.tables import format_change, linear_trend, paired_table, per_image_table  # noqa: E402
from pipeline.workflow import stage_params  # noqa: E402

REWARDS = {"mixed": "reward_mixed", "ocr": "ocr_mean", "color": "color_mean", "quality": "quality_mean"}


def overridden(raw: dict, assignments: list[str]) -> dict:
    """``raw`` with every ``a.b.c=value`` applied (value parsed as YAML, ``5e-5`` as a number)."""
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--set {assignment!r}: expected key=value")
        *parents, leaf = key.split(".")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml_or_number(value)
    return raw


def yaml_or_number(text: str):
    """``text`` parsed as YAML; YAML 1.1 reads ``5e-5`` (no dot) as a string, so floats win."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def train_flags(cfg: StudyConfig, method: str, seed: int) -> list[str]:
    """The train rule's ``--config-json`` and ``--runtime-json`` for ``method`` at ``seed``."""
    return [
        "--config-json",
        canonical_json(stage_params.train_params(cfg, method, seed)),
        "--runtime-json",
        canonical_json(stage_params.train_runtime(cfg)),
    ]


def summary(method: str, out_dir: Path) -> str:
    metrics = pd.read_parquet(out_dir / "metrics.parquet")
    probe = pd.read_parquet(out_dir / "probe.parquet")
    parts = [f"{method}: {len(metrics)} iterations, {metrics['seconds'].median():.1f} s each (median)"]
    for name, column in REWARDS.items():
        if column not in metrics:
            continue
        change, se = linear_trend(metrics["iteration"].to_numpy(), metrics[column].to_numpy())
        line = f"  {name:8s} rollout trend {format_change(change, se) or 'n/a':24s}"
        if column in probe and len(probe):
            line += f" probe {probe[column].iloc[0]:.3f} -> {probe[column].iloc[-1]:.3f}"
        parts.append(line)
    if "clip_fraction" in metrics:
        parts.append(f"  clip fraction {metrics['clip_fraction'].mean():.3f}, KL {metrics['kl'].mean():.2e}")
    return "\n".join(parts)


def evaluate(
    cfg: StudyConfig, name: str, base_dir: Path, weights: Path | None, out_dir: Path, seed: int = 0
) -> Path:
    """The study's sample_eval then score stages for one model (a run of training seed ``seed``
    when ``weights`` are given); returns its rewards table."""
    rewards = out_dir / "rewards.parquet"
    if rewards.is_file():
        return rewards
    stage = canonical_json(stage_params.sample_eval_params(cfg, seed if weights else None))
    test = f"datasets/{cfg.dataset.name}/test.parquet"
    command = [
        sys.executable,
        "-m",
        "pipeline.stages.sample_eval",
        "--model",
        name,
        "--base-model",
        str(base_dir),
    ]
    command += ["--weights", str(weights)] if weights else []
    command += ["--test", test, "--config-json", stage, "--out-dir", str(out_dir), "--threads", "2"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        [
            sys.executable, "-m", "pipeline.stages.score", "--samples", str(out_dir / "samples.parquet"),
            "--out", str(rewards), "--rewards", ",".join(cfg.rewards.score),
            "--settings-json", canonical_json(stage_params.score_params(cfg)["settings"]),
            "--workers", "2",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return rewards


def files_digest(folder: Path) -> str:
    """A SHA-256 over the names and bytes of the files in ``folder``."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def paired_gains(cfg: StudyConfig, images: pd.DataFrame) -> str:
    """Each trained run's paired test gain over ``base`` for the mixed reward and each reward."""
    paired = paired_table(images)
    lines = []
    for _, row in paired.iterrows():
        cells = [
            f"{name} {format_change(row[f'{name}_diff'], row[f'{name}_diff_se'])}"
            for name in ("mixed", *cfg.rewards.score)
            if f"{name}_diff" in row
        ]
        lines.append(
            f"{row['model']}: test gain over base (paired, {row['images']} images): " + ", ".join(cells)
        )
    return "\n".join(lines)


def across_seeds(cfg: StudyConfig, images: pd.DataFrame, card: dict | None) -> str:
    """Per method: z per reward, B and W, mean ± standard error across its training seeds, and
    each seed's B (one seed: its values)."""
    spreads, spread_text = outcome_spreads(card, images, list(cfg.rewards.score))
    runs = standardised_gains(images, spreads)
    runs["method"] = runs.model.str.split("/").str[0]
    lines = [f"z units: {spread_text}"]
    for method, group in runs.groupby("method", sort=False):
        columns = ("B", "W", *(f"z_{name}" for name in spreads))
        if len(group) == 1:
            cells = [f"{column} {group[column].iloc[0]:+.3f}" for column in columns]
            lines.append(f"{method} (1 seed): " + ", ".join(cells))
            continue
        cells = []
        for column in columns:
            values = group[column].to_numpy()
            cells.append(f"{column} {format_change(values.mean(), values.std(ddof=1) / len(values) ** 0.5)}")
        b = group["B"].to_numpy()
        per_seed = "B per seed " + ", ".join(f"{value:+.3f}" for value in b)
        sd = b.std(ddof=1)
        lines.append(
            f"{method} ({len(group)} seeds): " + ", ".join(cells)
            + f"; B = {b.mean() / (sd / len(b) ** 0.5):.1f} SE; {per_seed} (SD {sd:.2f})"
        )  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("config.yaml"))
    parser.add_argument("--label", required=True, help="name of this setting (output folder)")
    parser.add_argument("--methods", default="flow_grpo,multi_grpo")
    parser.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default train.seed)")
    parser.add_argument("--set", action="append", default=[], dest="assignments", metavar="KEY=VALUE")
    parser.add_argument("--base-model", type=Path, default=None, help="default: the study's")
    parser.add_argument("--base-card", type=Path, default=None, help="its card's figures.json (z units)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", action="store_true", help="train the runs at once")
    parser.add_argument("--evaluate", action="store_true", help="then score the test split against the base")
    parser.add_argument("--reuse", action="store_true", help="keep a run's finished training output")
    args = parser.parse_args(argv)

    raw = overridden(read_yaml(args.config), args.assignments)
    cfg = load(raw, source=f"{args.config} with --set")
    base_dir = args.base_model or Path(f"results/{cfg.study}/base_model/model")
    card_file = args.base_card or base_dir.parent / "card" / "figures.json"
    train_split = Path(f"datasets/{cfg.dataset.name}/train.parquet")
    if not (base_dir / "model.safetensors").is_file():
        raise SystemExit(f"{base_dir}: no base model; run the study's pretrain_base first")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [cfg.train.seed]
    runs = [(method, seed) for method in args.methods.split(",") for seed in seeds]
    threads = max(1, args.threads // len(runs)) if args.parallel else args.threads
    jobs = []
    for method, seed in runs:
        out_dir = Path("results/bench/learning") / args.label / method / f"seed{seed}"
        out_dir.mkdir(parents=True, exist_ok=True)
        if args.reuse and (out_dir / "weights.safetensors").is_file():
            jobs.append((f"{method}/seed{seed}", seed, out_dir, None, None))
            continue
        # A run trained again is another model: its old test figures must not be reused.
        shutil.rmtree(out_dir / "eval", ignore_errors=True)
        command = [
            sys.executable, "-u", "-m", "pipeline.stages.train", "--method", method,
            "--train", str(train_split),
            "--base-model", str(base_dir), *train_flags(cfg, method, seed),
            "--out-dir", str(out_dir), "--threads", str(threads),
        ]  # fmt: skip
        log = open(out_dir / "train.log", "w")  # noqa: SIM115 (closed after the job)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        jobs.append((f"{method}/seed{seed}", seed, out_dir, process, log))
        if not args.parallel:
            process.wait()
    failed = 0
    for run, _, out_dir, job, log in jobs:
        code = job.wait() if job else 0
        if log:
            log.close()
        if code:
            print(f"{run}: exit {code}, see {out_dir / 'train.log'}")
            failed += 1
        else:
            print(summary(run, out_dir))
    if args.evaluate and not failed:
        root = Path("results/bench/learning")
        # The base model's evaluation, kept per base model (its bytes: a re-pretrained base at
        # the same path is another model) and evaluation config.
        base_key = config_hash(
            stage_params.sample_eval_params(cfg, None) | {"base_weights": files_digest(base_dir)}
        )
        tables = {"base": evaluate(cfg, "base", base_dir, None, root / f"base-{base_key[:12]}")}
        for run, seed, out_dir, _, _ in jobs:
            weights = out_dir / "weights.safetensors"
            tables[run] = evaluate(cfg, run, base_dir, weights, out_dir / "eval", seed)
        rewards = pd.concat([pd.read_parquet(path).assign(model=model) for model, path in tables.items()])
        images = per_image_table(rewards, dict(cfg.train.reward_weights))
        print(paired_gains(cfg, images))
        card = json.loads(card_file.read_text()) if card_file.is_file() else None
        print(across_seeds(cfg, images, card))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
