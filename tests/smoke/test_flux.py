"""The flux backend on a tiny random FLUX folder: load offline, shapes, agreement with
diffusers' FluxPipeline, sampling, LoRA training and the reference policy."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config.types import MethodConfig, TrainConfig
from pipeline.models.backends import load_policy
from pipeline.models.flux import FluxPolicy, image_ids, pack_latents, unpack_latents
from pipeline.models.flux_random import build_random_flux
from pipeline.rewards import build_rewards
from pipeline.rl.settings import loop_settings, method_spec
from pipeline.rl.trainer import run_iteration
from pipeline.sampling.tree import ode_samples
from tests.smoke.tiny import train_config_json

PROMPTS = [
    'A shop sign that reads "OPEN". The color of the text "OPEN" is red.',
    'A mug with "TEA" in blue ink.',
]
RESOLUTION = 32  # latents [16, 4, 4]: 4 patch tokens


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    return build_random_flux(tmp_path_factory.mktemp("flux"))


@pytest.fixture(scope="module")
def base(flux_dir):
    """The policy without an adapter: the base model."""
    return FluxPolicy.from_pretrained(flux_dir, resolution=RESOLUTION, lora_rank=0, max_sequence_length=32)


def _lora_policy(flux_dir) -> FluxPolicy:
    return FluxPolicy.from_pretrained(
        flux_dir, resolution=RESOLUTION, lora_rank=4, lora_alpha=8, max_sequence_length=32
    )


def test_loads_offline_encodes_predicts_and_decodes(flux_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy = FluxPolicy.from_pretrained(flux_dir, resolution=64, lora_rank=0, max_sequence_length=24)
    assert policy.latent_shape == (16, 8, 8)
    cond, uncond = policy.encode(PROMPTS)
    for c in (cond, uncond):
        assert c.tensors["embeds"].shape == (2, 24, 32) and c.tensors["pooled"].shape == (2, 32)
    assert not torch.equal(cond.tensors["embeds"][0], cond.tensors["embeds"][1])
    empty, _ = policy.encode([""])  # the unconditional branch is the empty prompt, for every row
    for key in ("embeds", "pooled"):
        torch.testing.assert_close(uncond.tensors[key], empty.tensors[key].expand_as(uncond.tensors[key]))
    x = torch.randn(2, *policy.latent_shape)
    v = policy.velocity(x, torch.tensor([0.9, 0.2]), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()
    images = policy.decode(x)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8


def test_resolution_must_tile_patches(flux_dir):
    with pytest.raises(ValueError, match="multiple of 16"):
        FluxPolicy.from_pretrained(flux_dir, resolution=40, lora_rank=0)


def test_missing_folder_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path: .*no model_index.json"):
        FluxPolicy.from_pretrained(tmp_path / "nothing")


def test_pack_unpack_are_inverse_and_match_diffusers():
    from diffusers import FluxPipeline

    x = torch.randn(3, 16, 6, 10)
    tokens = pack_latents(x)
    assert tokens.shape == (3, 3 * 5, 64)
    torch.testing.assert_close(unpack_latents(tokens, 6, 10), x, rtol=0, atol=0)
    t = torch.randn(2, 12, 64)
    torch.testing.assert_close(pack_latents(unpack_latents(t, 8, 6)), t, rtol=0, atol=0)
    # The token layout FLUX's weights expect: diffusers' own packing and positions.
    torch.testing.assert_close(FluxPipeline._pack_latents(x, 3, 16, 6, 10), tokens, rtol=0, atol=0)
    reference_ids = FluxPipeline._prepare_latent_image_ids(1, 3, 5, "cpu", torch.float32)
    torch.testing.assert_close(image_ids(6, 10), reference_ids, rtol=0, atol=0)
    with pytest.raises(ValueError, match="even"):
        pack_latents(torch.randn(1, 16, 5, 4))


def test_velocity_agrees_with_diffusers_flux_pipeline(base):
    """Two Euler steps of FluxPipeline (its own packing, ids, timestep and guidance scaling)
    equal two Euler steps on ``policy.velocity`` from the same noise and sigmas."""
    x = torch.randn(1, *base.latent_shape, generator=torch.Generator().manual_seed(0))
    packed = base.pipe(
        prompt=PROMPTS[0],
        height=RESOLUTION,
        width=RESOLUTION,
        num_inference_steps=2,
        guidance_scale=base.distilled_guidance,
        latents=pack_latents(x),
        max_sequence_length=base.max_sequence_length,
        output_type="latent",
        return_dict=False,
    )[0]
    sigmas = base.pipe.scheduler.sigmas  # the pipeline's shifted sigmas, ending at 0
    assert len(sigmas) == 3
    cond, _ = base.encode(PROMPTS[:1])
    y = x
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            y = y + (s_next - s) * base.velocity(y, s.reshape(1), cond)
    assert not torch.allclose(y, x, atol=1e-3)
    torch.testing.assert_close(y, unpack_latents(packed, *base.latent_shape[1:]), rtol=1e-4, atol=1e-5)


def test_distilled_guidance_reaches_the_transformer(flux_dir, base):
    other = FluxPolicy.from_pretrained(
        flux_dir, resolution=RESOLUTION, lora_rank=0, max_sequence_length=32, distilled_guidance=1.0
    )
    cond, _ = base.encode(PROMPTS[:1])
    x, sigma = torch.randn(1, *base.latent_shape), torch.tensor([0.5])
    with torch.no_grad():
        assert not torch.allclose(base.velocity(x, sigma, cond), other.velocity(x, sigma, cond))


def test_ode_samples_are_deterministic_with_true_cfg(base):
    first = ode_samples(base, PROMPTS, steps=3, guidance=2.0, seed=5)
    again = ode_samples(base, PROMPTS, steps=3, guidance=2.0, seed=5)
    other = ode_samples(base, PROMPTS, steps=3, guidance=2.0, seed=6)
    assert first.images.shape == (2, RESOLUTION, RESOLUTION, 3) and first.images.dtype == np.uint8
    assert first.nfe == 2 * 2 * 3  # two prompts, guided (two rows), three steps
    np.testing.assert_array_equal(first.images, again.images)
    torch.testing.assert_close(first.final_latents, again.final_latents, rtol=0, atol=0)
    assert not torch.allclose(first.final_latents, other.final_latents)


def test_lora_targets_and_reference_is_the_base_model(base, flux_dir):
    policy = _lora_policy(flux_dir)
    lora = [n for n, p in policy.module.named_parameters() if p.requires_grad]
    assert lora and all("lora" in n for n in lora)
    assert {n for n in lora if n.startswith("single_transformer_blocks.")}, "single blocks not adapted"
    assert {n for n in lora if ".add_q_proj." in n}, "text-stream projections not adapted"
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())
    cond, _ = base.encode(PROMPTS[:1])
    x, sigma = torch.randn(1, *base.latent_shape), torch.tensor([0.7])
    with torch.no_grad():
        expected = base.velocity(x, sigma, cond)
        torch.testing.assert_close(policy.velocity(x, sigma, cond), expected)  # LoRA B starts at 0
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(policy.velocity(x, sigma, cond), expected)
        with policy.reference():
            torch.testing.assert_close(policy.velocity(x, sigma, cond), expected)
        assert not torch.allclose(policy.velocity(x, sigma, cond), expected)  # adapter back on


def test_one_training_iteration_moves_only_lora(flux_dir, tmp_path):
    policy = load_policy("flux", flux_dir, lora_rank=4, lora_alpha=8, resolution=RESOLUTION, device="cpu")
    assert isinstance(policy, FluxPolicy)
    policy.max_sequence_length = 32  # keep the CPU test short; load_policy uses the model default
    with torch.no_grad():  # LoRA's B starts at zero; give it a value so its gradient reaches A too
        for p in policy.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    before = {n: p.detach().clone() for n, p in policy.module.named_parameters()}
    raw = json.loads(train_config_json("flow_grpo"))
    settings = loop_settings(TrainConfig(**raw["train"]), raw["sampling"])
    method = method_spec(MethodConfig(**raw["method"]), raw["sampling"]["train_steps"])
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-3)
    rows = [
        {"prompt": f'A sign that reads "{w}". The color of the text "{w}" is {c}.', "text": w, "color": c}
        for w, c in [("CAT", "red"), ("SUN", "blue"), ("TREE", "green"), ("MOON", "black")]
    ]
    row = run_iteration(
        policy, optimizer, build_rewards(["color", "quality"]), pd.DataFrame(rows), method, settings, 0
    )
    assert row["trained_edges"] > 0
    changed = {n for n, p in policy.module.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora" in n for n in changed), sorted(n for n in changed if "lora" not in n)[:3]
