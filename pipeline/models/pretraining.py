"""Rectified-flow pretraining of the mini model on rendered examples of the train split: the
model built from its config, the batches, and the training loop with its checkpoints."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.config.types import MiniModelConfig, PretrainConfig
from pipeline.data.render import Layout, render_example
from pipeline.models.ema import Ema, without_averages
from pipeline.models.flow_matching import flow_matching_loss, mixed_sigmas, noisy_sample, warmup_lr
from pipeline.models.mini import MiniConfig, MiniModel, MiniTokenizer
from pipeline.runtime.checkpoint import load_checkpoint, restart_remedy, save_checkpoint
from pipeline.runtime.progress import Progress
from pipeline.runtime.time_guard import TimeGuard

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
    guard = TimeGuard("pretrain", cfg.max_minutes, cfg.on_time_limit, cfg.stall_minutes)

    def checkpoint(done: int) -> None:
        weights = model.state_dict() | (ema.checkpoint_tensors() if ema else {})
        state = {"step": done, "history": history, "config_hash": stage_hash}
        state["elapsed_s"] = time.perf_counter() - began
        save_checkpoint(checkpoint_dir, weights, optimizer, state)

    progress = Progress("pretrain", cfg.steps, "step", done=start)
    with guard:
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
            sigma = mixed_sigmas(
                len(pixels), cfg.sigma_mean, cfg.sigma_std, cfg.sigma_uniform_share, generator
            )
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
