"""GRPO iterations of the sd3 backend at SD3.5-Medium size on a GPU: speed and memory.

    python bench/sd3_gpu.py [--iterations 3] [--prompts 2] [--resolution 512]

Builds a random-weight SD3 pipeline with SD3.5-Medium's transformer configuration (2.26B
transformer parameters; text encoders shallow but of the real widths: see
pipeline/models/sd3_random.py)
directly on the GPU in bf16, wraps it in the sd3 policy (LoRA r32/alpha64 as Flow-GRPO,
gradient checkpointing), and runs GRPO iterations of the multi_grpo method through the
project's own trainer (tree sampling with CFG 4.5, 10 steps, the quality reward, PPO-clip
with KL). Prints seconds per iteration, sampling NFE per second and peak GPU memory.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.models.sd3 import SD3Policy  # noqa: E402
from pipeline.models.sd3_random import random_sd3_pipeline  # noqa: E402
from pipeline.rewards.quality import QualityReward  # noqa: E402
from pipeline.rl.trainer import LoopSettings, MethodSpec, run_iteration  # noqa: E402
from pipeline.sampling.schedule import TreeSchedule  # noqa: E402

WORDS = ["OPEN", "SALE", "HELLO", "TIGER", "ROCKET", "MAPLE", "CAMERA", "GARDEN"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument(
        "--size", choices=["sd35m", "tiny"], default="sd35m", help="tiny: a CPU check of the script"
    )
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --size tiny --device cpu --resolution 64)")
        return 1
    torch.manual_seed(0)
    start = time.perf_counter()
    dtype = torch.bfloat16 if cuda else torch.float32
    policy = SD3Policy(
        random_sd3_pipeline(args.size, device=args.device).to(dtype=dtype),
        device=args.device,
        dtype=dtype,
        resolution=args.resolution,
        lora_rank=32,
        lora_alpha=64,
        gradient_checkpointing=True,
    )
    params = sum(p.numel() for p in policy.transformer.parameters())
    lora = sum(p.numel() for p in policy.trainable_parameters())
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"{device_name}: transformer {params / 1e9:.2f}B parameters, LoRA {lora / 1e6:.1f}M, "
        f"built in {time.perf_counter() - start:.0f} s"
    )
    train = pd.DataFrame(
        {
            "prompt": [f'A shop sign that reads "{w}". The color of the text "{w}" is red.' for w in WORDS],
            "text": WORDS,
            "color": ["red"] * len(WORDS),
        }
    )
    method = MethodSpec(
        TreeSchedule(num_steps=10, roots=2, branch_steps=(1, 3), branch_factors=(2, 2)), "normalize_then_mix"
    )
    settings = LoopSettings(
        prompts_per_iteration=args.prompts,
        clip_range=1e-4,
        beta=0.04,
        max_grad_norm=1.0,
        optimizer_steps_per_iteration=2,
        microbatch=8,
        guidance=4.5,
        noise_level=0.7,
        sde_type="sde",
        shift=3.0,
        max_batch=32,
        reward_weights={"quality": 1.0},
    )
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=3e-4, weight_decay=1e-4)
    rewards = {"quality": QualityReward()}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for iteration in range(args.iterations):
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        row = run_iteration(policy, optimizer, rewards, train, method, settings, iteration)
        if cuda:
            torch.cuda.synchronize()
        row["seconds"] = time.perf_counter() - began
        rows.append(row)
        print(
            f"iteration {iteration}: {row['seconds']:.1f} s, sampling NFE {row['nfe_sampling']}, "
            f"training NFE {row.get('nfe_training', 0)}, trained edges {row['trained_edges']}, "
            f"loss {row.get('loss', 0):.4f}, kl {row.get('kl', 0):.2e}, quality {row['quality_mean']:.3f}"
        )
    steady = rows[1:] or rows
    seconds = statistics.median(r["seconds"] for r in steady)
    nfe = statistics.median(r["nfe_sampling"] + r.get("nfe_training", 0) for r in steady)
    sampling_nfe = statistics.median(r["nfe_sampling"] for r in steady)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    print(
        f"median over iterations 1..{len(rows) - 1}: {seconds:.1f} s/iteration, {nfe / seconds:.1f} NFE/s "
        f"(sampling {sampling_nfe} + training rows per iteration), peak GPU memory {peak:.1f} GiB, "
        f"{args.prompts} prompts x 8 leaves at {args.resolution} px"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
