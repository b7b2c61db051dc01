"""Stage ``pretrain_base``: train the mini base model by rectified flow on rendered text.

    python -m pipeline.stages.pretrain_base --train train.parquet --config-json '{...}' --out-dir DIR

Every batch is rendered on the fly from the curated train split (``text`` in a shade of
``color``; :mod:`pipeline.data.render`), seeded by (seed, step) so that a resumed run sees the
same batches as an uninterrupted one. Velocity loss, logit-normal noise levels, AdamW with
linear warm-up, gradient clipping, caption dropout for classifier-free guidance, and an
optional exponential moving average of the weights (``ema_decay``; the saved model is then
the average). The same config and thread count give a bit-identical model, also across a
kill and resume (deterministic kernels; ``train_info.json`` records the threads).
Training runs ``steps`` steps; ``max_minutes`` is a guard (:mod:`pipeline.runtime.time_guard`).

Outputs in ``DIR``: ``model/`` (``config.json`` + ``model.safetensors``), ``metrics.parquet``
(step, loss, learning rate, elapsed seconds) and ``train_info.json``. A checkpoint in
``DIR/checkpoint`` is written every ``checkpoint_every`` steps; a rerun with the same config
resumes from it (a different config starts afresh).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from pipeline.config.files import config_hash
from pipeline.config.types import PRETRAIN_RUNTIME_KEYS, MiniModelConfig, PretrainConfig
from pipeline.models.mini import save_mini
from pipeline.models.pretraining import build_model, train
from pipeline.runtime import io, tracking
from pipeline.runtime.checkpoint import interrupt_note
from pipeline.workflow.sources import sources_digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="curated train split (Parquet)")
    parser.add_argument("--config-json", required=True, help='{"pretrain": {...}, "mini": {...}}')
    parser.add_argument(
        "--runtime-json", required=True, help='{"max_minutes": ..., "on_time_limit": ...}: the time guard'
    )
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    tracking.add_arguments(parser)
    args = parser.parse_args(argv)

    raw, runtime = json.loads(args.config_json), json.loads(args.runtime_json)
    guards = {key: runtime[key] for key in PRETRAIN_RUNTIME_KEYS if key in runtime}
    cfg = PretrainConfig(**raw["pretrain"], **guards)
    mini_cfg = MiniModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw["mini"].items()})
    if not args.train.is_file():
        raise SystemExit(f"--train {args.train}: no such file")
    train_split = pd.read_parquet(args.train)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Bit-reproducible for a config and a thread count (a different count sums in another
    # order): seeded batches, noise and init, and deterministic kernels only.
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _pretrain(args, raw, runtime, cfg, mini_cfg, train_split)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _pretrain(
    args, raw: dict, runtime: dict, cfg: PretrainConfig, mini_cfg: MiniModelConfig, train_split: pd.DataFrame
) -> int:
    model = build_model(mini_cfg, cfg.seed)
    resume_file = args.out_dir / tracking.RESUME_RUN_FILE
    tracked = tracking.stage_run(args, raw, resume_file=resume_file, runtime=runtime)
    with interrupt_note(args.out_dir / "checkpoint"), tracked as run:
        # The checkpoint belongs to what decides the weights, config and code: after a changed
        # time guard it resumes, after a code edit it starts afresh.
        stage_hash = config_hash({"config": raw, "code": sources_digest("pipeline.stages.pretrain_base")})
        info = train(model, train_split, cfg, args.out_dir, run, stage_hash)
        save_mini(model, args.out_dir / "model")
        metrics = pd.DataFrame(info.pop("history"))
        io.write_parquet(
            args.out_dir / "metrics.parquet", pa.Table.from_pandas(metrics, preserve_index=False)
        )
        info |= {
            "ema_decay": cfg.ema_decay,
            "threads": torch.get_num_threads(),  # the model is reproducible for this count
            "parameters": sum(p.numel() for p in model.parameters()),
            "model_config": asdict(model.config),
        }
        io.write_json(args.out_dir / "train_info.json", info)
        run.log_metrics({"train_seconds": info["train_seconds"], "steps": info["steps"]})
    print(f"trained {info['steps']} steps in {info['train_seconds']:.0f} s -> {args.out_dir / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
