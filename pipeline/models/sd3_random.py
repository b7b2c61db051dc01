"""Build a local SD3 folder with random weights, offline: for tests and GPU benchmarks.

``tiny`` is a model of a few MB that runs on a CPU in milliseconds; ``sd35m`` has the
transformer configuration of Stable Diffusion 3.5 Medium (2.5B parameters, MM-DiT-X with
dual attention in the first 13 blocks) with shallow text encoders of the real widths
(CLIP-L 768, CLIP-G 1280, T5 4096), so the transformer's cost is the real one. Tokenizers
are character-level, built from a vocabulary in code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def char_clip_tokenizer():
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab |= {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def char_t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(chr(c), -3.0) for c in range(33, 127)] + [("\u2581" + chr(c), -2.5) for c in range(33, 127)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


SIZES = {
    "tiny": dict(
        transformer=dict(
            sample_size=32,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=4,
            joint_attention_dim=64,
            caption_projection_dim=64,
            pooled_projection_dim=64,
            out_channels=16,
            pos_embed_max_size=32,
        ),
        clip=(32, 32),
        t5=64,
        vae=(32, 32, 64, 64),
        vae_layers=1,
    ),
    "sd35m": dict(
        transformer=dict(
            sample_size=128,
            patch_size=2,
            in_channels=16,
            num_layers=24,
            attention_head_dim=64,
            num_attention_heads=24,
            joint_attention_dim=4096,
            caption_projection_dim=1536,
            pooled_projection_dim=2048,
            out_channels=16,
            pos_embed_max_size=384,
            qk_norm="rms_norm",
            dual_attention_layers=tuple(range(13)),
        ),
        clip=(768, 1280),
        t5=4096,
        vae=(128, 256, 512, 512),
        vae_layers=2,
    ),
}


def random_sd3_pipeline(size: str = "tiny", seed: int = 0, device: str | torch.device | None = None):
    """A random-weight ``StableDiffusion3Pipeline`` of ``size``, built on ``device`` (CPU by default)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    spec = SIZES[size]
    torch.manual_seed(seed)
    clip_tok, t5_tok = char_clip_tokenizer(), char_t5_tokenizer()

    def clip(hidden: int):
        return CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=len(clip_tok),
                hidden_size=hidden,
                intermediate_size=2 * hidden,
                num_hidden_layers=1,
                num_attention_heads=max(1, hidden // 64),
                max_position_embeddings=77,
                projection_dim=hidden,
                bos_token_id=clip_tok.bos_token_id,
                eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id,
            )
        )

    with torch.device(device or "cpu"):
        t5 = T5EncoderModel(
            T5Config(
                vocab_size=len(t5_tok),
                d_model=spec["t5"],
                d_kv=64,
                d_ff=2 * spec["t5"] // 4,
                num_layers=1,
                num_heads=max(1, spec["t5"] // 512),
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=16,
            block_out_channels=spec["vae"],
            layers_per_block=spec["vae_layers"],
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=1.5305,
            shift_factor=0.0609,
            use_quant_conv=False,
            use_post_quant_conv=False,
            norm_num_groups=32,
        )
        return StableDiffusion3Pipeline(
            transformer=SD3Transformer2DModel(**spec["transformer"]),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=clip(spec["clip"][0]),
            tokenizer=clip_tok,
            text_encoder_2=clip(spec["clip"][1]),
            tokenizer_2=clip_tok,
            text_encoder_3=t5,
            tokenizer_3=t5_tok,
        )


def build_random_sd3(folder: str | Path, size: str = "tiny", seed: int = 0) -> Path:
    """Save a random-weight ``StableDiffusion3Pipeline`` of ``size`` to ``folder``."""
    folder = Path(folder)
    random_sd3_pipeline(size, seed).save_pretrained(folder)
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    args = parser.parse_args(argv)
    build_random_sd3(args.out, args.size)
    print(f"wrote a random {args.size} SD3 folder to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
