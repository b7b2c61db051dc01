"""GRPO iterations and evaluation of the sd3 backend at the paper config's shapes on a GPU.

    python bench/sd3_gpu.py [--config configs/paper_ocr_color.yaml] [--methods multi_grpo,flow_grpo] \
        [--iterations 3] [--prompts 6] [--eval-prompts 0]

Builds a random-weight SD3 pipeline with SD3.5-Medium's transformer configuration (2.26B
transformer parameters; text encoders shallow but of the real widths: see
pipeline/models/sd3_random.py) directly on the GPU in bf16, wraps it in the sd3 policy with the
config's LoRA, gradient checkpointing and resolution, and runs GRPO iterations of each method
through the project's trainer with the config's train and sampling settings (one rank's share:
``--prompts``, by default ``prompts_per_iteration / gpus``; the quality reward stands in for
the rewards, whose scoring is not timed here). Then samples ``--eval-prompts`` test prompts
(default ``sampling.eval_chunk``) as evaluation does. Prints, per method, seconds per iteration,
images (leaves) per second and peak GPU memory, and the evaluation's images per second and peak
memory, each beside the arithmetic estimate of ``pipeline.workflow.memory``. ``--size tiny --device cpu
--resolution 64`` checks the script on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.config.files import merged, read_yaml  # noqa: E402
from pipeline.config.load import load  # noqa: E402
from pipeline.models.sd3 import SD3Policy  # noqa: E402
from pipeline.models.sd3_random import random_sd3_pipeline  # noqa: E402
from pipeline.rewards.quality import QualityReward  # noqa: E402
from pipeline.rl.settings import loop_settings, method_spec
from pipeline.rl.trainer import run_iteration  # noqa: E402
from pipeline.sampling.tree import ode_samples  # noqa: E402
from pipeline.workflow import memory  # noqa: E402

WORDS = ["OPEN", "SALE", "HELLO", "TIGER", "ROCKET", "MAPLE", "CAMERA", "GARDEN"]


def peak_gib(cuda: bool) -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/paper_ocr_color.yaml"))
    parser.add_argument("--methods", default="multi_grpo,flow_grpo")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=0, help="prompts per iteration (0: one rank's share)")
    parser.add_argument("--eval-prompts", type=int, default=0, help="0: sampling.eval_chunk")
    parser.add_argument("--resolution", type=int, default=0, help="0: the config's")
    parser.add_argument(
        "--size", choices=["sd35m", "tiny"], default="sd35m", help="tiny: a CPU check of the script"
    )
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU (or --size tiny --device cpu --resolution 64)")
        return 1
    raw = merged(read_yaml("config.yaml"), read_yaml(args.config))
    cfg = load(raw, str(args.config), check_paths=False)
    resolution = args.resolution or cfg.model.resolution
    prompts = args.prompts or cfg.train.prompts_per_iteration // cfg.train.gpus
    torch.manual_seed(0)
    start = time.perf_counter()
    dtype = torch.bfloat16 if cuda else torch.float32
    policy = SD3Policy(
        random_sd3_pipeline(args.size, device=args.device).to(dtype=dtype),
        device=args.device,
        dtype=dtype,
        resolution=resolution,
        lora_rank=cfg.train.lora_rank,
        lora_alpha=cfg.train.lora_alpha,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
    )
    params = sum(p.numel() for p in policy.transformer.parameters())
    lora = sum(p.numel() for p in policy.trainable_parameters())
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    print(
        f"{device_name}: transformer {params / 1e9:.2f}B parameters, LoRA {lora / 1e6:.1f}M, "
        f"built in {time.perf_counter() - start:.0f} s; {args.config}, {resolution} px"
    )
    split = pd.DataFrame(
        {
            "prompt": [
                f'A shop sign that reads "{w}". The color of the text "{w}" is red.' for w in WORDS * 8
            ],
            "text": WORDS * 8,
            "color": ["red"] * len(WORDS) * 8,
        }
    )
    settings = dataclasses.replace(
        loop_settings(cfg.train, dataclasses.asdict(cfg.sampling)),
        prompts_per_iteration=prompts,
        reward_weights={"quality": 1.0},
        z_weights={"quality": 1.0},
        std_floor={},
    )
    parts = memory.training_estimate(cfg)
    estimate = sum(parts.values()) - parts["PickScore (float32)"]
    for name in args.methods.split(","):
        method = method_spec(cfg.methods[name], cfg.sampling.train_steps, cfg.train.sde_steps)
        optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.train.learning_rate)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for iteration in range(args.iterations):
            if cuda:
                torch.cuda.synchronize()
            began = time.perf_counter()
            row = run_iteration(
                policy, optimizer, {"quality": QualityReward()}, split, method, settings, iteration
            )
            if cuda:
                torch.cuda.synchronize()
            rows.append(row | {"seconds": time.perf_counter() - began})
            print(
                f"  {name} iteration {iteration}: {rows[-1]['seconds']:.1f} s, sampling NFE "
                f"{row['nfe_sampling']}, training NFE {row.get('nfe_training', 0)}, "
                f"trained edges {row['trained_edges']}"
            )
        steady = rows[1:] or rows
        seconds = statistics.median(r["seconds"] for r in steady)
        images = prompts * method.schedule.leaves_per_prompt
        print(
            f"{name}: {seconds:.1f} s/iteration (median of iterations 1..{len(rows) - 1}), "
            f"{images / seconds:.2f} images/s ({prompts} prompts x {method.schedule.leaves_per_prompt} "
            f"leaves), peak GPU memory {peak_gib(cuda):.1f} GiB (est. {estimate:.0f} GB without PickScore)"
        )
    count = args.eval_prompts or cfg.sampling.eval_chunk or 128
    test = list(split.prompt) * (-(-count // len(split)))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    began = time.perf_counter()
    ode_samples(
        policy, test[:count], cfg.sampling.eval_steps, cfg.sampling.guidance, 0,
        cfg.sampling.max_batch, cfg.sampling.shift, chunk=cfg.sampling.eval_chunk,
    )  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    estimate = sum(memory.evaluation_estimate(cfg).values())
    print(
        f"evaluation: {count} prompts, {cfg.sampling.eval_steps} steps at CFG {cfg.sampling.guidance} in "
        f"{seconds:.0f} s = {count / seconds:.2f} images/s, peak GPU memory {peak_gib(cuda):.1f} GiB "
        f"(est. {estimate:.0f} GB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
