"""Tree sampling vs independent trajectories on the mini model: NFE and wall time.

    .venv/bin/python bench/tree_sampling.py [--prompts 4] [--steps 10] [--repeats 3]

Every variant yields the same number of leaves (images) per prompt. Tree sampling shares the
prefix up to each branching step, so it spends fewer transformer evaluations; with batched
evaluation the wall-time ratio should follow the NFE ratio. Prints median wall time of the
repeats (same run, same machine) and both ratios against independent trajectories.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.models.mini import MiniConfig, MiniModel, MiniPolicy  # noqa: E402
from pipeline.sampling.schedule import flow_sigmas  # noqa: E402
from pipeline.sampling.tree import sample_tree  # noqa: E402
from pipeline.sampling.tree_schedule import TreeSchedule  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=4.0)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    policy = MiniPolicy(MiniModel(MiniConfig()))  # random weights: timing only
    prompts = [
        f'A sign that reads "WORD{i}". The color of the text "WORD{i}" is red.' for i in range(args.prompts)
    ]
    sigmas = flow_sigmas(args.steps)
    variants = {
        "independent (K=8)": TreeSchedule(args.steps, roots=8),
        "tree K=2, 2x@1, 2x@3": TreeSchedule(args.steps, roots=2, branch_steps=(1, 3), branch_factors=(2, 2)),
        "tree K=1, 2x@0, 2x@1, 2x@2": TreeSchedule(
            args.steps, roots=1, branch_steps=(0, 1, 2), branch_factors=(2, 2, 2)
        ),
    }
    sample_tree(policy, prompts[:1], variants["independent (K=8)"], sigmas, guidance=args.guidance)  # warm-up
    rows = []
    for name, schedule in variants.items():
        assert schedule.leaves_per_prompt == 8
        times, nfe = [], 0
        for repeat in range(args.repeats):
            start = time.perf_counter()
            rollout = sample_tree(
                policy, prompts, schedule, sigmas, guidance=args.guidance, seed=repeat, max_batch=64
            )
            times.append(time.perf_counter() - start)
            nfe = rollout.nfe
        rows.append((name, nfe, statistics.median(times)))
    base_nfe, base_time = rows[0][1], rows[0][2]
    print(
        f"{args.prompts} prompts x 8 leaves, {args.steps} steps, CFG {args.guidance}, "
        f"median of {args.repeats}"
    )
    print(f"{'variant':30s} {'NFE':>6s} {'wall s':>8s} {'NFE ratio':>10s} {'time ratio':>11s}")
    for name, nfe, seconds in rows:
        print(f"{name:30s} {nfe:6d} {seconds:8.2f} {nfe / base_nfe:10.3f} {seconds / base_time:11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
