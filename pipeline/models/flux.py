"""The ``flux`` backend: FLUX.1 components from a local folder, LoRA via peft.

The folder is a diffusers ``FluxPipeline`` layout (``model_index.json``, ``transformer/``,
``vae/``, ``text_encoder/`` (CLIP-L, pooled output only), ``text_encoder_2/`` (T5-XXL),
``tokenizer{,_2}/``), read with ``local_files_only=True``: nothing is downloaded. Only the
transformer's LoRA adapter trains; the reference policy is the same transformer with the
adapter disabled. LoRA adapts ``to_q, to_k, to_v, to_out.0, add_q_proj, add_k_proj,
add_v_proj, to_add_out`` of the double-stream blocks and ``to_q, to_k, to_v`` of the
single-stream blocks (:data:`LORA_TARGETS`); MLPs and the single blocks' fused ``proj_out``
stay frozen.

The sampler and the trainer see the same latents as with ``sd3``: ``[B, 16, H/8, W/8]``.
FLUX's transformer reads a sequence of 2x2 latent patches instead, so :meth:`FluxPolicy.velocity`
packs the latents into tokens (:func:`pack_latents`), gives every token its position
(:func:`image_ids`, :func:`text_ids`) and unpacks the predicted velocity back.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from pipeline.models.policy import Conditioning, add_float32_lora

# The sd3 backend's list: every attention projection of the double-stream (MM-DiT) blocks,
# image and text stream. peft matches by name suffix, so ``attn.to_q`` / ``attn.to_k`` /
# ``attn.to_v`` also adapt the single-stream blocks' attention; those blocks have no
# ``to_out`` or added projections, and their ``proj_out`` (attention output fused with the
# MLP) and ``proj_mlp`` stay frozen: LoRA stays on attention only, like sd3.
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

#: side of the square latent patches FLUX's transformer reads as tokens
PATCH = 2


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """Latents ``[B, C, H, W]`` -> patch tokens ``[B, (H/2)(W/2), 4C]``.

    Tokens run row-major over the patch grid; a token's features are ordered
    (channel, row in patch, column in patch), the order FLUX's ``x_embedder`` was trained on.
    """
    b, c, h, w = latents.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"latent height and width must be even to pack 2x2 patches, got {h}x{w}")
    patches = latents.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)
    # [B, C, H/2, 2, W/2, 2] -> [B, H/2, W/2, C, 2, 2]
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Patch tokens ``[B, (H/2)(W/2), 4C]`` -> latents ``[B, C, H, W]`` (inverse of :func:`pack_latents`)."""
    b, n, d = tokens.shape
    if n != (height // PATCH) * (width // PATCH) or d % (PATCH * PATCH):
        raise ValueError(f"{n} tokens of {d} features do not tile a {height}x{width} latent")
    c = d // (PATCH * PATCH)
    patches = tokens.reshape(b, height // PATCH, width // PATCH, c, PATCH, PATCH)
    # [B, H/2, W/2, C, 2, 2] -> [B, C, H/2, 2, W/2, 2]
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def image_ids(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rotary positions ``[(H/2)(W/2), 3]`` of the patch tokens of an ``H x W`` latent.

    Axis 0 is 0 for image tokens; axes 1 and 2 are the patch's row and column, in the token
    order of :func:`pack_latents`. float32: integers stay exact whatever the model dtype.
    """
    rows, cols = height // PATCH, width // PATCH
    grid = torch.stack(
        torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), dim=-1
    )  # [H/2, W/2, 2]
    ids = torch.cat([torch.zeros(rows, cols, 1, dtype=grid.dtype), grid], dim=-1)
    return ids.reshape(rows * cols, 3).to(device, torch.float32)


def text_ids(length: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Rotary positions ``[L, 3]`` of ``L`` text tokens: all zero (FLUX gives text no position)."""
    return torch.zeros(length, 3, device=device, dtype=torch.float32)


class FluxPolicy:
    """Args:
    pipe: a ``FluxPipeline`` (see :meth:`from_pretrained`).
    device, dtype: where and in which precision the frozen parts and the transformer run.
    resolution: image side in pixels (a multiple of 16: VAE factor 8 times the 2x2 packing).
    lora_rank, lora_alpha: LoRA size; rank 0 trains nothing.
    max_sequence_length: T5 tokens (512, FluxPipeline's default for FLUX.1-dev; the model
        attends to the padding, so this changes its outputs).
    gradient_checkpointing: trade compute for activation memory in training.
    distilled_guidance: FLUX.1-dev is guidance-distilled: the guidance scale is an input of
        the transformer (``guidance``, embedded like the timestep), not a second pass. Every
        :meth:`velocity` call feeds this value (3.5, FLUX.1-dev's usual one). It is ignored
        for a transformer without a guidance embedding (``guidance_embeds=False``, e.g.
        FLUX.1-schnell).

    True classifier-free guidance still works on top: :meth:`encode` returns the empty
    prompt's embeddings as the unconditional branch, as for ``sd3``, so a sampler ``guidance``
    above 1 runs the unconditional pass and mixes ``v_u + g (v_c - v_u)``; each pass also
    carries ``distilled_guidance``. With FLUX.1-dev one usually samples with the sampler's
    ``guidance`` at 1 and steers through ``distilled_guidance`` alone.
    """

    def __init__(
        self,
        pipe,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        resolution: int = 512,
        lora_rank: int = 32,
        lora_alpha: int = 64,
        max_sequence_length: int = 512,
        gradient_checkpointing: bool = False,
        distilled_guidance: float = 3.5,
    ):
        self.device, self.dtype = torch.device(device), dtype
        self.pipe = pipe
        self.pipe.set_progress_bar_config(disable=True)
        for part in (pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
            if part is not None:
                part.to(self.device, dtype).requires_grad_(False)
        self.transformer = pipe.transformer
        self.max_sequence_length = max_sequence_length
        self.distilled_guidance = float(distilled_guidance)
        scale = pipe.vae_scale_factor
        multiple = scale * PATCH
        if resolution % multiple:
            raise ValueError(f"model.resolution {resolution} must be a multiple of {multiple}")
        # The transformer's input features are 2x2 patches of the VAE's latent channels.
        channels = self.transformer.config.in_channels // (PATCH * PATCH)
        self.latent_shape = (channels, resolution // scale, resolution // scale)
        self.lora_rank = lora_rank
        if lora_rank > 0:
            add_float32_lora(self.transformer, lora_rank, lora_alpha, LORA_TARGETS)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, dtype: torch.dtype = torch.float32, **kwargs
    ) -> FluxPolicy:
        """Load the pipeline from a local folder (config ``model.path``); nothing is downloaded."""
        model_dir = Path(model_dir)
        if not (model_dir / "model_index.json").is_file():
            raise FileNotFoundError(
                f"model.path: {model_dir} is not a local diffusers FLUX folder (no model_index.json)"
            )
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(model_dir, dtype=dtype, local_files_only=True)
        return cls(pipe, dtype=dtype, **kwargs)

    @property
    def module(self) -> torch.nn.Module:
        return self.transformer

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 embeddings ``[B, L, D_t5]`` and pooled CLIP embeddings ``[B, D_clip]``."""
        embeds, pooled, _ = self.pipe.encode_prompt(
            prompts, prompts, device=self.device, max_sequence_length=self.max_sequence_length
        )
        return embeds, pooled

    def encode(self, prompts: list[str]) -> tuple[Conditioning, Conditioning]:
        with torch.no_grad():
            embeds, pooled = self._encode(prompts)
            # The unconditional branch is the empty prompt, the same for every row.
            empty, empty_pooled = self._encode([""])
        n = len(prompts)
        return (
            Conditioning({"embeds": embeds, "pooled": pooled}),
            Conditioning({"embeds": empty.repeat(n, 1, 1), "pooled": empty_pooled.repeat(n, 1)}),
        )

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        b, _, h, w = latents.shape
        embeds = cond.tensors["embeds"]
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), self.distilled_guidance, device=latents.device, dtype=torch.float32)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            tokens = self.transformer(
                hidden_states=pack_latents(latents.to(self.dtype)),
                # FLUX takes sigma itself (0..1): the model scales timestep and guidance by 1000
                # before embedding them (FluxPipeline passes scheduler timesteps / 1000).
                timestep=sigma.to(self.dtype),
                guidance=guidance,
                encoder_hidden_states=embeds,
                pooled_projections=cond.tensors["pooled"],
                txt_ids=text_ids(embeds.shape[1], latents.device),
                img_ids=image_ids(h, w, latents.device),
                return_dict=False,
            )[0]
        return unpack_latents(tokens, h, w)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        # Latents live in the normalised space the transformer was trained on; undo it for the VAE.
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
