"""Evaluation sampling in chunks: the same images as the whole split at once, and the same as the
forest sampler's deterministic trees (the path evaluation took before chunks)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.backends import load_policy
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.tree import ode_samples, sample_tree
from pipeline.sampling.tree_schedule import TreeSchedule
from tests.smoke.tiny import tiny_mini_dir

PROMPTS = [f'A sign that reads "{word}". The color of the text "{word}" is red.' for word in "ABCDEFG"]


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    return load_policy("mini", tiny_mini_dir(tmp_path_factory.mktemp("mini")), device="cpu")


# Chunks that are whole multiples of the prompts per model call (max_batch, halved under CFG)
# group the rows as one batch does, so the images are bit-identical.
@pytest.mark.parametrize(
    ("chunk", "max_batch", "guidance"), [(2, 2, 1.0), (4, 4, 1.0), (3, 1, 1.0), (64, 64, 1.0), (4, 4, 3.0)]
)
def test_chunked_evaluation_gives_the_images_of_one_batch(policy, chunk, max_batch, guidance):
    whole = ode_samples(policy, PROMPTS, 3, guidance, seed=4, max_batch=max_batch, shift=1.0)
    chunked = ode_samples(policy, PROMPTS, 3, guidance, seed=4, max_batch=max_batch, shift=1.0, chunk=chunk)
    np.testing.assert_array_equal(chunked.images, whole.images)
    assert chunked.nfe == whole.nfe == len(PROMPTS) * 3 * (1 if guidance == 1 else 2)
    assert chunked.final_latents.shape == (len(PROMPTS), *policy.latent_shape)


def test_ode_samples_follow_the_deterministic_forest_and_call_back_per_chunk_step(policy):
    steps, calls = 3, []
    chunked = ode_samples(
        policy, PROMPTS, steps, 2.0, seed=1, max_batch=4, shift=1.0, on_step=calls.append, chunk=4
    )
    schedule = TreeSchedule(num_steps=steps, roots=1, between="ode")
    forest = sample_tree(
        policy, PROMPTS, schedule, flow_sigmas(steps, 1.0), guidance=2.0, noise_level=0.0, max_batch=4, seed=1
    )
    # The same noise and Euler steps; the forest encodes all prompts in one call, so a pixel
    # may round to the neighbouring level.
    assert np.abs(chunked.images.astype(int) - forest.images.astype(int)).max() <= 1
    assert chunked.nfe == forest.nfe == 2 * len(PROMPTS) * steps  # guided: two rows per prompt and step
    assert calls == [0, 1, 2] * 2  # two chunks (4 + 3 prompts)
