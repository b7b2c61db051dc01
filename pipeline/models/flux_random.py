"""Build a local FLUX folder with tiny random weights, offline: for tests.

The model has FLUX.1-dev's structure (double- and single-stream blocks, guidance embedding,
16-channel VAE with its scaling and shift factors, CLIP pooled + T5 text encoders, the
dynamic-shift flow-matching scheduler) at a few MB, and runs on a CPU in milliseconds.
Tokenizers are the character-level ones of :mod:`pipeline.models.sd3_random`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from pipeline.models.sd3_random import char_clip_tokenizer, char_t5_tokenizer

CLIP_WIDTH, T5_WIDTH = 32, 32

TINY_TRANSFORMER = dict(
    patch_size=1,
    in_channels=64,  # 16 latent channels x a 2x2 patch
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=T5_WIDTH,
    pooled_projection_dim=CLIP_WIDTH,
    guidance_embeds=True,  # as FLUX.1-dev
    axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
)


def random_flux_pipeline(seed: int = 0, device: str | torch.device | None = None):
    """A tiny random-weight ``FluxPipeline``, built on ``device`` (CPU by default)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tok, t5_tok = char_clip_tokenizer(), char_t5_tokenizer()
    with torch.device(device or "cpu"):
        clip = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tok),
                hidden_size=CLIP_WIDTH,
                intermediate_size=2 * CLIP_WIDTH,
                num_hidden_layers=1,
                num_attention_heads=1,
                max_position_embeddings=77,
                bos_token_id=clip_tok.bos_token_id,
                eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id,
            )
        )
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tok),
                d_model=T5_WIDTH,
                d_kv=16,
                d_ff=2 * T5_WIDTH,
                num_layers=1,
                num_heads=2,
            )
        )
        # Four blocks: the 8x downsampling of FLUX's VAE; FLUX.1's latent normalisation.
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=(32, 32, 32, 32),
            layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.3611,
            shift_factor=0.1159,
            use_quant_conv=False,
            use_post_quant_conv=False,
            norm_num_groups=32,
        )
        # FLUX.1-dev's scheduler configuration (the policy does not use it; FluxPipeline does).
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        return FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=clip,
            tokenizer=clip_tok,
            text_encoder_2=t5,
            tokenizer_2=t5_tok,
            transformer=FluxTransformer2DModel(**TINY_TRANSFORMER),
        )


def build_random_flux(folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-weight ``FluxPipeline`` to ``folder``."""
    folder = Path(folder)
    random_flux_pipeline(seed).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    build_random_flux(args.out, args.seed)
    print(f"wrote a tiny random FLUX folder to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
