"""Stage ``sample_eval``: deterministic evaluation samples of the base model or a trained method.

    python -m pipeline.stages.sample_eval --model base|<method> --base-model DIR [--weights W.safetensors] \
        --test test.parquet --config-json '{"sampling": ..., "model": ..., "evaluation": ...}' --out-dir DIR

ODE sampling (no noise) with the configured evaluation steps and guidance and fixed seeds, one
image per (test prompt, seed): the same prompts and seeds for every model, so images can be
compared across methods. Writes ``images/<line_id>_<seed>.png`` and ``samples.parquet``
(``image_path`` relative to the samples file, ``prompt``, ``text``, ``color``, ``line_id``,
``seed``, ``model``, ``nfe`` per image, and the ``training_nfe`` and ``iteration`` of the
weights).

Equal-NFE evaluation: with ``--snapshots DIR --own-metrics M.parquet --match-nfe-of R.parquet``
instead of ``--weights``, the weights are the run's snapshot (``DIR/iteration_NNNN.safetensors``)
whose cumulative training NFE (``M``) is nearest the final cumulative NFE of another run
(``R``, a tree method's): the methods then compare at equal compute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch
from PIL import Image

from pipeline.models.backends import backend_options, load_policy
from pipeline.models.weights import load_weights_file
from pipeline.runtime import io, tracking
from pipeline.runtime.checkpoint import snapshot_files
from pipeline.runtime.progress import Progress
from pipeline.sampling.tree import ode_samples


def nearest_snapshot(cumulative_nfe: dict[int, float], snapshots: list[int], target: float) -> int:
    """The snapshot iteration (of ``snapshots``) whose cumulative NFE after that many
    iterations (``cumulative_nfe``: iterations done -> NFE) is nearest ``target``; the earlier
    one on a tie."""
    usable = [i for i in sorted(snapshots) if i in cumulative_nfe]
    if not usable:
        raise ValueError(f"no snapshot among {sorted(snapshots)} has a recorded cumulative NFE")
    return min(usable, key=lambda i: abs(cumulative_nfe[i] - target))


def equal_nfe_weights(snapshots: Path, own_metrics: Path, reference_metrics: Path) -> tuple[Path, int, float]:
    """The snapshot file of :func:`nearest_snapshot`, its iteration and its cumulative NFE."""
    own = pd.read_parquet(own_metrics)
    cumulative = dict(zip(own["iteration"].astype(int) + 1, own["nfe_cumulative"].astype(float), strict=True))
    target = float(pd.read_parquet(reference_metrics)["nfe_cumulative"].iloc[-1])
    files = snapshot_files(snapshots)
    try:
        chosen = nearest_snapshot(cumulative, list(files), target)
    except ValueError as error:
        raise SystemExit(f"--snapshots {snapshots}: {error}") from error
    return files[chosen], chosen, cumulative[chosen]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="'base' or the method name (recorded)")
    parser.add_argument("--base-model", type=Path, required=True)
    parser.add_argument("--weights", type=Path, default=None, help="a method's weights.safetensors")
    parser.add_argument("--snapshots", type=Path, default=None, help="a run's snapshots/ (equal NFE)")
    parser.add_argument("--own-metrics", type=Path, default=None, help="that run's metrics.parquet")
    parser.add_argument("--match-nfe-of", type=Path, default=None, help="the metrics.parquet to match")
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--config-json", required=True)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default=None)
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw = json.loads(args.config_json)
    sampling, model, evaluation = raw["sampling"], raw["model"], raw["evaluation"]
    if args.threads:
        torch.set_num_threads(args.threads)
    train = raw.get("train", {})
    # A snapshot's iterations and NFE; a run's final weights leave them to its train_info.json.
    iteration, training_nfe = float("nan"), float("nan")
    if args.snapshots is not None:
        if args.own_metrics is None or args.match_nfe_of is None:
            raise SystemExit("--snapshots needs --own-metrics and --match-nfe-of")
        args.weights, iteration, training_nfe = equal_nfe_weights(
            args.snapshots, args.own_metrics, args.match_nfe_of
        )
        print(f"{args.model}: snapshot after {iteration} iterations, {training_nfe:.0f} training NFE")
    trained = args.weights is not None
    if not trained:
        iteration, training_nfe = 0, 0.0
    policy = load_policy(
        model["backend"],
        args.base_model,
        lora_rank=train.get("lora_rank", 0) if trained else 0,
        lora_alpha=train.get("lora_alpha", 0),
        device=args.device,
        trainable=trained,
        **backend_options(model),
    )
    if trained:
        load_weights_file(policy, args.weights, "rerun the train job that wrote it")
    test = pd.read_parquet(args.test)
    if evaluation["max_prompts"]:
        test = test.head(evaluation["max_prompts"])
    rows = []
    steps, seeds, chunk = sampling["eval_steps"], evaluation["seeds"], sampling["eval_chunk"]
    chunks = -(-len(test) // chunk) if chunk else 1
    # One unit is one denoising step of one chunk of one seed's test split.
    progress = Progress(f"sample_eval {args.model}", steps * chunks * len(seeds), "step")
    with tracking.stage_run(args, raw) as run, progress:
        for seed in seeds:
            rollout = ode_samples(
                policy,
                list(test.prompt),
                steps,
                sampling["guidance"],
                seed,
                sampling["max_batch"],
                sampling["shift"],
                on_step=lambda step, seed=seed: progress.advance(note=f"seed {seed}"),
                chunk=chunk,
            )
            for image, record in zip(rollout.images, test.itertuples(index=False), strict=True):
                relative = Path("images") / f"{record.line_id}_{seed}.png"
                with io.atomic_path(args.out_dir / relative) as tmp:
                    Image.fromarray(image).save(tmp, format="png")
                rows.append(
                    {
                        "image_path": str(relative),
                        "prompt": record.prompt,
                        "text": record.text,
                        "color": record.color,
                        "line_id": record.line_id,
                        "seed": seed,
                        "model": args.model,
                        "nfe": rollout.nfe / len(test),
                        "iteration": iteration,
                        "training_nfe": training_nfe,
                    }
                )
        table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
        io.write_parquet(args.out_dir / "samples.parquet", table)
        run.log_metrics({"images": len(rows)})
    print(f"{args.model}: {len(rows)} evaluation images -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
