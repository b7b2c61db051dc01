"""The sd3 and mini backends: build, save, load offline, and run through the same sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.models.mini import MiniConfig, MiniModel, MiniPolicy, load_mini, parse_prompt, save_mini
from pipeline.models.sd3 import SD3Policy
from pipeline.models.sd3_random import build_random_sd3
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.tree import sample_tree
from pipeline.sampling.tree_schedule import TreeSchedule

PROMPTS = [
    'A shop sign that reads "OPEN". The color of the text "OPEN" is red.',
    'A mug with "TEA" in blue ink.',
]
SCHEDULE = TreeSchedule(num_steps=4, roots=2, branch_steps=(0, 1), branch_factors=(2, 2))


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return build_random_sd3(tmp_path_factory.mktemp("sd3"), "tiny")


def _perturb_lora(policy) -> None:
    with torch.no_grad():
        for param in policy.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))


def _check_reference(policy) -> None:
    """The reference policy is the model before training: equal before, different after."""
    cond, _ = policy.encode(PROMPTS[:1])
    x, sigma = torch.randn(1, *policy.latent_shape), torch.tensor([0.7])
    with torch.no_grad():
        before = policy.velocity(x, sigma, cond)
        _perturb_lora(policy)
        after = policy.velocity(x, sigma, cond)
        with policy.reference():
            reference = policy.velocity(x, sigma, cond)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(reference, before)


def test_sd3_loads_offline_and_samples_a_tree(sd3_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = SD3Policy.from_pretrained(sd3_dir, resolution=64, lora_rank=4, lora_alpha=8)
    assert policy.latent_shape == (16, 8, 8)
    assert policy.trainable_parameters() and all(
        "lora" in n for n, p in policy.module.named_parameters() if p.requires_grad
    )
    rollout = sample_tree(policy, PROMPTS, SCHEDULE, flow_sigmas(4), guidance=4.5, seed=0)
    assert (
        rollout.images.shape == (2 * SCHEDULE.leaves_per_prompt, 64, 64, 3)
        and rollout.images.dtype == np.uint8
    )
    again = sample_tree(policy, PROMPTS, SCHEDULE, flow_sigmas(4), guidance=4.5, seed=0)
    np.testing.assert_array_equal(rollout.images, again.images)
    assert rollout.nfe == 2 * 2 * SCHEDULE.nfe_per_prompt()


def test_sd3_reference_disables_the_adapter(sd3_dir):
    _check_reference(SD3Policy.from_pretrained(sd3_dir, resolution=64, lora_rank=4, lora_alpha=8))


def test_sd3_missing_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path: .*no model_index.json"):
        SD3Policy.from_pretrained(tmp_path / "nothing")


def test_mini_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = MiniModel(MiniConfig(block_out_channels=(16, 32, 32), d_model=32, text_layers=1))
    save_mini(model, tmp_path / "mini")
    loaded = load_mini(tmp_path / "mini")
    a, b = MiniPolicy(model), MiniPolicy(loaded)
    ra = sample_tree(a, PROMPTS, SCHEDULE, flow_sigmas(4), guidance=2.0, seed=1)
    rb = sample_tree(b, PROMPTS, SCHEDULE, flow_sigmas(4), guidance=2.0, seed=1)
    np.testing.assert_array_equal(ra.images, rb.images)
    assert ra.images.shape == (2 * SCHEDULE.leaves_per_prompt, 32, 128, 3)


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_mini_trainable_parameters_and_reference(lora_rank):
    torch.manual_seed(0)
    policy = MiniPolicy(
        MiniModel(MiniConfig(block_out_channels=(16, 32, 32), d_model=32, text_layers=1)), lora_rank=lora_rank
    )
    trainable = policy.trainable_parameters()
    assert trainable and not any(p.requires_grad for p in policy.model.text_encoder.parameters())
    unet_total = sum(p.numel() for p in policy.model.unet.parameters())
    assert (sum(p.numel() for p in trainable) == unet_total) == (lora_rank == 0)
    _check_reference(policy)


def test_mini_reads_the_parsed_prompt():
    assert parse_prompt(PROMPTS[0]) == ("OPEN", "red")
    assert parse_prompt(PROMPTS[1]) == ("TEA", "blue")
    assert parse_prompt('A plain "SIGN" on a wall.') == ("SIGN", None)


def test_mini_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_mini(tmp_path)


def test_a_job_that_requires_a_gpu_stops_on_the_cpu_saying_why(tmp_path):
    from pipeline.models.backends import load_policy
    from tests.smoke.tiny import tiny_mini_dir

    with pytest.raises(SystemExit) as stopped:
        load_policy("mini", tiny_mini_dir(tmp_path / "mini"), device="cpu", require_gpu=True)
    message = str(stopped.value)
    assert message.startswith("model.require_gpu is true, but this job would run on the CPU: device cpu")
    assert ("is a CPU build" in message) if torch.version.cuda is None else ("no CUDA device" in message)
    assert load_policy("mini", tmp_path / "mini", device="cpu").device.type == "cpu"  # not required: runs
