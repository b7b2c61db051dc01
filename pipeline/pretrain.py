"""Stage ``pretrain_base``: train the mini base model by rectified flow on rendered text.

    python -m pipeline.pretrain --train train.parquet --config-json '{...}' --out-dir DIR

Every batch is rendered on the fly from the curated train split (``text`` in a shade of
``color``; :mod:`pipeline.render`), seeded by (seed, step) so that a resumed run sees the
same batches as an uninterrupted one. Velocity loss, logit-normal noise levels, AdamW with
linear warm-up, gradient clipping, caption dropout for classifier-free guidance, and an
optional exponential moving average of the weights (``ema_decay``; the saved model is then
the average). The same config and thread count give a bit-identical model, also across a
kill and resume (deterministic kernels; ``train_info.json`` records the threads).
Training runs ``steps`` steps; ``max_minutes`` is a guard (:mod:`pipeline.time_guard`).

Outputs in ``DIR``: ``model/`` (``config.json`` + ``model.safetensors``), ``metrics.parquet``
(step, loss, learning rate, elapsed seconds) and ``train_info.json``. A checkpoint in
``DIR/checkpoint`` is written every ``checkpoint_every`` steps; a rerun with the same config
resumes from it (a different config starts afresh).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from pipeline import io, tracking
from pipeline.checkpoint import load_checkpoint, restart_remedy, save_checkpoint
from pipeline.config import PRETRAIN_RUNTIME_KEYS, MiniModelConfig, PretrainConfig, config_hash
from pipeline.flow_matching import flow_matching_loss, mixed_sigmas, noisy_sample, warmup_lr
from pipeline.models.mini import MiniConfig, MiniModel, MiniTokenizer, save_mini
from pipeline.progress import Progress
from pipeline.render import Layout, render_example
from pipeline.rl.ema import Ema, without_averages
from pipeline.sources import sources_digest
from pipeline.time_guard import TimeGuard

LOG_EVERY = 10  # steps between loss records


def build_model(cfg: MiniModelConfig, seed: int) -> MiniModel:
    layout = Layout()
    torch.manual_seed(seed)
    return MiniModel(
        MiniConfig(
            height=layout.height,
            width=layout.width,
            max_text_len=cfg.max_text_len,
            d_model=cfg.d_model,
            text_layers=cfg.text_layers,
            block_out_channels=tuple(cfg.block_out_channels),
            position_map_channels=cfg.position_map_channels,
            cell_coordinates=cfg.cell_coordinates,
            template_channels=cfg.template_channels,
            left_px=float(layout.left_px),
            advance_px=float(layout.advance_px),
        )
    )


def make_batch(
    train: pd.DataFrame, tokenizer: MiniTokenizer, cfg: PretrainConfig, step: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[B, 3, H, W]`` in [-1, 1] and token ids ``[B, T]`` for ``step`` (seeded by step)."""
    rng = np.random.default_rng([cfg.seed, step])
    rows = train.iloc[rng.integers(0, len(train), cfg.batch_size)]
    images = np.stack(
        [
            render_example(t, c, rng, cfg.shade_spread, cfg.competing_background)
            for t, c in zip(rows["text"], rows["color"], strict=True)
        ]
    )
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    ids = tokenizer(list(rows["prompt"]))
    dropped = torch.from_numpy(rng.random(cfg.batch_size) < cfg.caption_dropout)
    ids[dropped] = torch.tensor(tokenizer.unconditional())
    return pixels, ids


def train(
    model: MiniModel, train_split: pd.DataFrame, cfg: PretrainConfig, out_dir: Path, run, stage_hash: str
) -> dict:
    """The training loop; returns what ``train_info.json`` records. With ``cfg.ema_decay`` the
    model's parameters hold the moving average when it returns."""
    tokenizer = MiniTokenizer(model.config.max_text_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    ema = Ema(list(model.parameters()), cfg.ema_decay) if cfg.ema_decay else None
    checkpoint_dir = out_dir / "checkpoint"
    start, elapsed, history = 0, 0.0, []
    restored = load_checkpoint(checkpoint_dir, optimizer, stage_hash)
    if restored is not None:
        weights, state = restored
        try:
            model.load_state_dict(without_averages(weights))  # strict: every tensor, no other
        except RuntimeError as error:
            first = str(error).strip().splitlines()[0]
            raise SystemExit(
                f"{checkpoint_dir / 'weights.safetensors'}: does not fit the model ({first}); "
                f"{restart_remedy(checkpoint_dir)}"
            ) from None
        if ema is not None:
            ema.restore(weights)
        start, elapsed, history = state["step"], state["elapsed_s"], state["history"]
        print(f"resuming from step {start} ({elapsed:.0f} s trained)")
    elif checkpoint_dir.exists():
        print("checkpoint from another config or code: starting afresh")
    model.train()
    began, step = time.perf_counter() - elapsed, start
    guard = TimeGuard(cfg.max_minutes, cfg.on_time_limit, "pretrain.max_minutes")

    def checkpoint(done: int) -> None:
        weights = model.state_dict() | (ema.checkpoint_tensors() if ema else {})
        state = {"step": done, "history": history, "config_hash": stage_hash}
        state["elapsed_s"] = time.perf_counter() - began
        save_checkpoint(checkpoint_dir, weights, optimizer, state)

    progress = Progress("pretrain", cfg.steps, "step", done=start)
    for step in range(start, cfg.steps):
        if guard.would_exceed():
            if step > start and step % cfg.checkpoint_every:
                checkpoint(step)  # a rerun after the guard resumes here
            print(guard.trip(step, cfg.steps, "steps"))
            break
        guard.start_unit()
        lr = warmup_lr(step, cfg.learning_rate, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pixels, ids = make_batch(train_split, tokenizer, cfg, step)
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(pixels.shape, generator=generator)
        sigma = mixed_sigmas(len(pixels), cfg.sigma_mean, cfg.sigma_std, cfg.sigma_uniform_share, generator)
        predicted = model(noisy_sample(pixels, noise, sigma), sigma, model.text_encoder(ids), ids)
        loss = flow_matching_loss(predicted, pixels, noise)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"pretraining loss is {loss.item()} at step {step}; last checkpoint kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not torch.isfinite(grad_norm):  # a finite loss can still have an infinite gradient
            raise FloatingPointError(
                f"pretraining gradient norm is {grad_norm.item()} at step {step}; the step was not "
                "applied and the last checkpoint is kept"
            )
        optimizer.step()
        if ema is not None:
            ema.update()
        if step % LOG_EVERY == 0 or step == cfg.steps - 1:
            seconds = time.perf_counter() - began
            history.append({"step": step, "loss": loss.item(), "lr": lr, "elapsed_s": seconds})
            run.log_metrics({"loss": loss.item(), "lr": lr}, step=step)
        if (step + 1) % cfg.checkpoint_every == 0:
            checkpoint(step + 1)
        guard.end_unit()
        progress.advance(note=f"loss {history[-1]['loss']:.4f}" if history else "")
    else:
        step = cfg.steps
    if ema is not None:
        ema.copy_to_parameters()
    return {
        "steps": step,
        "steps_configured": cfg.steps,
        "cut_short": step < cfg.steps,
        "train_seconds": round(time.perf_counter() - began, 1),
        "history": history,
    }


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
    cfg = PretrainConfig(**raw["pretrain"], **{key: runtime[key] for key in PRETRAIN_RUNTIME_KEYS})
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
    with tracking.stage_run(args, raw, resume_file=resume_file, runtime=runtime) as run:
        # The checkpoint belongs to what decides the weights, config and code: after a changed
        # time guard it resumes, after a code edit it starts afresh.
        stage_hash = config_hash({"config": raw, "code": sources_digest("pipeline.pretrain")})
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
