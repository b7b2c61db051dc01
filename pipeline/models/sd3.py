"""The ``sd3`` backend: Stable Diffusion 3 / 3.5 components from a local folder, LoRA via peft.

The folder is a diffusers ``StableDiffusion3Pipeline`` layout (``model_index.json``,
``transformer/``, ``vae/``, ``text_encoder{,_2,_3}/``, ``tokenizer{,_2,_3}/``), read with
``local_files_only=True``: nothing is downloaded. Only the transformer's LoRA adapter trains;
the reference policy is the same transformer with the adapter disabled.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from pipeline.models.policy import Conditioning, add_float32_lora

# Flow-GRPO's LoRA targets: every attention projection of the joint (MM-DiT) blocks.
LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
)


class SD3Policy:
    """Args:
    pipe: a ``StableDiffusion3Pipeline`` (see :meth:`from_pretrained`).
    device, dtype: where and in which precision the frozen parts and the transformer run.
    resolution: image side in pixels.
    lora_rank, lora_alpha: LoRA size (Flow-GRPO: 32 / 64); rank 0 trains nothing.
    max_sequence_length: T5 tokens (Flow-GRPO uses 128).
    gradient_checkpointing: trade compute for activation memory in training.
    """

    def __init__(
        self,
        pipe,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        resolution: int = 512,
        lora_rank: int = 32,
        lora_alpha: int = 64,
        max_sequence_length: int = 128,
        gradient_checkpointing: bool = False,
    ):
        self.device, self.dtype = torch.device(device), dtype
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        for part in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            if part is not None:
                part.to(self.device, dtype).requires_grad_(False)
        self.transformer = pipe.transformer
        self.max_sequence_length = max_sequence_length
        scale = pipe.vae_scale_factor
        multiple = scale * self.transformer.config.patch_size
        if resolution % multiple:
            raise ValueError(f"model.resolution {resolution} must be a multiple of {multiple}")
        self.latent_shape = (self.transformer.config.in_channels, resolution // scale, resolution // scale)
        self.lora_rank = lora_rank
        if lora_rank > 0:
            add_float32_lora(self.transformer, lora_rank, lora_alpha, LORA_TARGETS)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, dtype: torch.dtype = torch.float32, **kwargs
    ) -> SD3Policy:
        """Load the pipeline from a local folder (config ``model.path``); nothing is downloaded."""
        model_dir = Path(model_dir)
        if not (model_dir / "model_index.json").is_file():
            raise FileNotFoundError(
                f"model.path: {model_dir} is not a local diffusers SD3 folder (no model_index.json)"
            )
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        return cls(pipe, dtype=dtype, **kwargs)

    @property
    def module(self) -> torch.nn.Module:
        return self.transformer

    def encode(self, prompts: list[str]) -> tuple[Conditioning, Conditioning]:
        with torch.no_grad():
            embeds, negative, pooled, negative_pooled = self.pipe.encode_prompt(
                prompts,
                prompts,
                prompts,
                device=self.device,
                do_classifier_free_guidance=True,
                negative_prompt=[""] * len(prompts),
                negative_prompt_2=[""] * len(prompts),
                negative_prompt_3=[""] * len(prompts),
                max_sequence_length=self.max_sequence_length,
            )
        return (
            Conditioning({"embeds": embeds, "pooled": pooled}),
            Conditioning({"embeds": negative, "pooled": negative_pooled}),
        )

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            return self.transformer(
                hidden_states=latents.to(self.dtype),
                timestep=(sigma * 1000.0).to(self.dtype),  # SD3 embeds timesteps on the 0..1000 scale
                encoder_hidden_states=cond.tensors["embeds"],
                pooled_projections=cond.tensors["pooled"],
                return_dict=False,
            )[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        images = vae.decode(latents, return_dict=False)[0]
        images = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self):
        self.transformer.disable_adapters()
        try:
            yield
        finally:
            self.transformer.enable_adapters()
