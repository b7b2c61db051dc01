"""The rollout as it was before batched forests, kept as the reference that the batched
sampler is tested against (tests/smoke/test_batched_rollout.py) and timed against
(bench/iteration_throughput.py): one :func:`~pipeline.rl.rollouts.sample_prompts` call per
prompt, at that prompt's position in the batch (so with its own seed), the forests merged in
prompt order. Leaves are not decoded (:func:`~pipeline.rl.rollouts.leaf_images` does that)."""

from __future__ import annotations

from pipeline.rl.distributed import merge_forests
from pipeline.rl.rollouts import sample_prompts  # bound here: the bench swaps the module's name
from pipeline.sampling.tree import TreeRollout


def per_prompt_forests(policy, prompts, first, method, settings, iteration) -> TreeRollout:
    """:func:`pipeline.rl.rollouts.sample_prompts`' signature and result, one prompt at a time."""
    return merge_forests(
        [
            sample_prompts(policy, [prompt], first + i, method, settings, iteration)
            for i, prompt in enumerate(prompts)
        ]
    )
