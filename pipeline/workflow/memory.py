"""Arithmetic estimate of a study's peak GPU memory per training rank and per evaluation job.

    python -m pipeline.workflow.memory [--configfile FILE] [--base config.yaml]

Estimates, not measurements (``bench/sd3_gpu.py`` measures): parameter counts of the paper
models' published architectures, and activations by the usual transformer rule (per block,
about 34 bytes per token and hidden unit in 16-bit without recomputation, the attention
kernel fused; 2 bytes per token and hidden unit kept per block with gradient checkpointing,
plus one block's activations while it is recomputed). Text encoders, VAE and PickScore stay
on the GPU, as Flow-GRPO keeps them. The workflow prints the estimate when it builds the DAG
of a paper-scale study (a dry run included), before any job.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

GB = 1e9


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs of a backend's models (counts in parameters)."""

    transformer: float
    text_encoders: float
    vae: float
    blocks: int
    hidden: int
    text_tokens: int
    #: the largest text encoder's heads and tokens: eager attention (T5's relative position
    #: bias) materialises ``heads x tokens^2`` scores per prompt
    encoder_heads: int
    encoder_tokens: int
    lora_linears_per_block: int  # attention projections LoRA adapts (pipeline.models.*.LORA_TARGETS)


# SD3.5-Medium: MMDiT-X, 24 joint blocks of width 1536 (2.5B); CLIP-L, OpenCLIP bigG and
# T5-XXL (5.5B together); the backend encodes 128 T5 tokens (pipeline.models.sd3) after CLIP's 77.
# FLUX.1-dev: 19 double- and 38 single-stream blocks of width 3072 (11.9B); T5-XXL at 512
# tokens and CLIP-L (4.9B).
ARCHITECTURES = {
    "sd3": Architecture(2.5e9, 5.5e9, 8.4e7, 24, 1536, 77 + 128, 64, 128, 8),
    "flux": Architecture(11.9e9, 4.9e9, 8.4e7, 57, 3072, 512, 64, 512, 5),
}
PICKSCORE_PARAMETERS = 9.9e8  # CLIP-H/14, kept in float32
BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def latent_tokens(resolution: int) -> int:
    """Image tokens of a 2x2-patch transformer over an 8x-downsampled latent."""
    return (resolution // 16) ** 2


def training_estimate(cfg) -> dict[str, float]:
    """GB per rank of one training step (``cfg``: a :class:`pipeline.config.StudyConfig`)."""
    arch = ARCHITECTURES[cfg.model.backend]
    weight_bytes = BYTES[cfg.model.dtype]
    tokens = latent_tokens(cfg.model.resolution) + arch.text_tokens
    rows = cfg.train.microbatch * (2 if cfg.train.guidance != 1 else 1)  # CFG: both branches
    per_block_full = 34 * tokens * arch.hidden * rows
    if cfg.train.gradient_checkpointing:
        activations = 2 * tokens * arch.hidden * rows * arch.blocks + per_block_full
    else:
        activations = per_block_full * arch.blocks
    lora = cfg.train.lora_rank * 2 * arch.hidden * arch.lora_linears_per_block * arch.blocks
    rewards = PICKSCORE_PARAMETERS * 4 if "pickscore" in cfg.trained_rewards() else 0.0
    return {
        "frozen weights": (arch.transformer + arch.text_encoders + arch.vae) * weight_bytes / GB,
        "LoRA weights, gradients and AdamW state (float32)": lora * 16 / GB,
        "activations of one microbatch": activations / GB,
        "PickScore (float32)": rewards / GB,
    }


def evaluation_estimate(cfg) -> dict[str, float]:
    """GB of one evaluation job: the weights and the text encoding of one chunk of prompts."""
    arch = ARCHITECTURES[cfg.model.backend]
    weight_bytes = BYTES[cfg.model.dtype]
    chunk = cfg.sampling.eval_chunk or 2048  # 0: the whole split (2,048 PickScore test captions)
    scores = arch.encoder_heads * arch.encoder_tokens**2 * chunk * weight_bytes
    rows = cfg.sampling.max_batch
    forward = 34 * (latent_tokens(cfg.model.resolution) + arch.text_tokens) * arch.hidden * rows
    return {
        "weights": (arch.transformer + arch.text_encoders + arch.vae) * weight_bytes / GB,
        f"text encoding of {chunk} prompts (attention scores)": scores / GB,
        f"one block's activations at {rows} rows (no gradients kept)": forward / GB,
    }


def report(cfg) -> str:
    """The estimate as lines of text; the mini model needs no GPU estimate."""
    if cfg.model.backend not in ARCHITECTURES:
        return f"memory estimate: backend {cfg.model.backend!r} is small (well under 1 GB per job)"
    lines = []
    for title, parts in (
        (f"training, per rank (microbatch {cfg.train.microbatch})", training_estimate(cfg)),
        (f"evaluation (eval_chunk {cfg.sampling.eval_chunk})", evaluation_estimate(cfg)),
    ):
        lines.append(f"{title}: est. {sum(parts.values()):.0f} GB")
        lines += [f"  {name}: {value:.1f} GB" for name, value in parts.items() if value]
    checkpointing = "on" if cfg.train.gradient_checkpointing else "off"
    lines.append(f"(arithmetic estimate, gradient checkpointing {checkpointing}; docs/guide.md)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from pipeline.config.files import merged, read_yaml
    from pipeline.config.load import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configfile", type=Path, default=None, help="a study config (merged onto --base)")
    parser.add_argument("--base", type=Path, default=Path("config.yaml"))
    args = parser.parse_args(argv)
    raw = read_yaml(args.base)
    if args.configfile:
        raw = merged(raw, read_yaml(args.configfile))
    print(report(load(raw, str(args.configfile or args.base), check_paths=False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
