"""The rollout as it was before batched forests, kept as the reference that the batched
sampler is tested against (tests/smoke/test_batched_rollout.py) and timed against
(bench/iteration_throughput.py): one ``sample_tree`` call per prompt, each with its own
seed, the forests merged in prompt order."""

from __future__ import annotations

from pipeline.rl import trainer
from pipeline.rl.distributed import merge_forests
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.tree import TreeRollout, sample_tree


def per_prompt_forests(
    policy, prompts, first, method, settings, iteration, decode: bool = True
) -> TreeRollout:
    """:func:`pipeline.rl.trainer.sample_prompts`' signature and result, one prompt at a time."""
    sigmas = flow_sigmas(method.schedule.num_steps, settings.shift)
    with trainer.denoiser_precision(policy, settings):
        parts = [
            sample_tree(
                policy,
                [prompt],
                method.schedule,
                sigmas,
                guidance=settings.guidance,
                noise_level=settings.noise_level,
                sde_type=settings.sde_type,
                max_batch=settings.max_batch,
                seed=trainer.prompt_seed(settings.seed, iteration, first + i),
                decode=decode,
            )
            for i, prompt in enumerate(prompts)
        ]
    return merge_forests(parts)
