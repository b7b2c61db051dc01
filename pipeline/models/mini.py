"""The ``mini`` backend: a small pixel-space text-to-image model that trains on 2 CPU cores.

It stands in for SD3.5-Medium in the default study and goes through the same policy
interface, sampler and trainer. Architecture (sizes in :class:`MiniConfig`):

* **What it reads.** Not every scene word: a parsed view of the prompt — the target text
  (the first double-quoted span) and the colour the prompt names for it (the curated
  sentence ``The color of the text "..." is <colour>.``, else the colour the curation rules
  read around the quoted span, else none). Nothing else reaches the model; in particular no
  side channel of the target beyond what the prompt says.
* **Tokenizer.** Built offline in code: one token per printable ASCII character of the
  text, one token per palette colour (plus "no colour"), and special tokens.
* **Text encoder.** Token + position embeddings and a small Transformer encoder:
  ``[B, T] -> [B, T, d_model]``, the cross-attention context.
* **Character position map** (optional, ``position_map_channels > 0``). The i-th
  character's learned embedding is painted into the i-th character's column band of extra
  input channels, where the renderer's fixed layout (``left_px``, ``advance_px``) puts that
  character. It tells the denoiser *where* each letter goes, which the small model cannot
  learn from cross-attention alone in minutes; it only works because the layout is fixed.
  With ``cell_coordinates`` two fixed channels follow it: the horizontal phase inside the
  character cell (0 at the cell's left edge to 1 at its right, 0 outside the text) and the
  vertical position (-1 top to 1 bottom). Inside a band the map is constant, so without them
  a pixel learns where it sits in its glyph only from distant band edges.
* **Character templates** (optional, ``template_channels = k > 0``, needs the map). Each
  token owns a learned ``[k, H, cell width]`` tensor, painted into its character's cell
  column by column. The constant band value leaves the network to *synthesise* each glyph's
  shape from coordinates, which it does not learn in minutes: the ODE drifts into illegible
  marks even though one-step denoising from moderate noise reads well. A template lets
  the shape be learned directly as a spatial pattern (by gradient, from the images; nothing
  rendered is copied in). Frozen during RL, like the text encoder and the map.
* **Denoiser.** diffusers ``UNet2DConditionModel`` on 2x pixel-unshuffled images (and map)
  (``[B, 3 + m, 32, 128] -> [B, 4 (3 + m), 16, 64]``), cross-attention at the two lower
  resolutions. Its output is the flow-matching velocity in pixel space (images in [-1, 1]).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from pipeline.data.curation import decide, first_quoted_span
from pipeline.data.palette import COLOR_NAMES
from pipeline.models.policy import Conditioning
from pipeline.runtime import io
from pipeline.runtime.checkpoint import read_tensors, require_finite

AUGMENTED_SENTENCE = re.compile(r'The colou?r of the text "([^"]*)" is ([a-z]+)\.')
PAD, NULL, BOS = 0, 1, 2
CHAR_OFFSET = 3  # printable ASCII 32..126 follow the special tokens
N_CHARS = 95
COLOR_OFFSET = CHAR_OFFSET + N_CHARS
NO_COLOR = COLOR_OFFSET + len(COLOR_NAMES)
VOCAB_SIZE = NO_COLOR + 1


@dataclass(frozen=True)
class MiniConfig:
    height: int = 32
    width: int = 128
    # Longest target text the tokenizer keeps (characters); longer texts are cut.
    max_text_len: int = 12
    d_model: int = 128
    text_layers: int = 2
    text_heads: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    attention_head_dim: int = 8
    # Pixel-unshuffle factor: 2 turns [3, 32, 128] into [12, 16, 64] (fewer, richer pixels).
    unshuffle: int = 2
    # Channels of the character position map (0 = no map) and the layout it follows
    # (pipeline.data.render.Layout: first character's left edge and per-character advance, px).
    position_map_channels: int = 8
    # Two fixed coordinate channels after the map (cell phase, vertical position); needs the map.
    cell_coordinates: bool = False
    # Channels of learned per-character 2-D templates ([H, cell width] each) painted into the
    # character bands after the map (0 = none); needs the map.
    template_channels: int = 0
    left_px: float = 8.0
    advance_px: float = 13.25

    @property
    def seq_len(self) -> int:
        return self.max_text_len + 2  # BOS/NULL + text + colour


def parse_prompt(prompt: str) -> tuple[str, str | None]:
    """``(target text, colour or None)``: the parsed view of a prompt the mini model reads."""
    match = AUGMENTED_SENTENCE.search(prompt)
    if match and match.group(2) in COLOR_NAMES:
        return match.group(1), match.group(2)
    span = first_quoted_span(prompt)
    text = (span.group(1) or span.group(2)) if span else ""
    return text, decide(prompt).color


class MiniTokenizer:
    """Character tokens of the target text plus one colour token (module docstring)."""

    def __init__(self, max_text_len: int):
        self.max_text_len = max_text_len

    def encode(self, prompt: str) -> list[int]:
        text, color = parse_prompt(prompt)
        chars = [
            CHAR_OFFSET + ord(c) - 32 if 32 <= ord(c) <= 126 else CHAR_OFFSET
            for c in text[: self.max_text_len]
        ]
        chars += [PAD] * (self.max_text_len - len(chars))
        color_token = NO_COLOR if color is None else COLOR_OFFSET + COLOR_NAMES.index(color)
        return [BOS, *chars, color_token]

    def unconditional(self) -> list[int]:
        return [NULL] + [PAD] * self.max_text_len + [NULL]

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """``[B, seq_len]`` token ids."""
        return torch.tensor([self.encode(p) for p in prompts], dtype=torch.long)


class TextEncoder(nn.Module):
    """``[B, T]`` token ids -> ``[B, T, d_model]`` context."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB_SIZE, config.d_model)
        self.positions = nn.Parameter(torch.zeros(1, config.seq_len, config.d_model))
        layer = nn.TransformerEncoderLayer(
            config.d_model,
            config.text_heads,
            4 * config.d_model,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.d_model)
        nn.init.normal_(self.positions, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(self.tokens(ids) + self.positions))


class MiniModel(nn.Module):
    """Text encoder + UNet; ``forward(pixels, sigma, ids)`` returns the velocity."""

    def __init__(self, config: MiniConfig):
        super().__init__()
        self.config = config
        r2 = config.unshuffle**2
        self.text_encoder = TextEncoder(config)
        self.char_map = (
            nn.Embedding(VOCAB_SIZE, config.position_map_channels) if config.position_map_channels else None
        )
        # Column -> index of the character drawn there (-1: no character), [W].
        columns = (torch.arange(config.width) + 0.5 - config.left_px) / config.advance_px
        band = torch.where(
            (columns >= 0) & (columns < config.max_text_len), columns.floor(), torch.tensor(-1.0)
        )
        self.register_buffer("column_char", band.long(), persistent=False)
        self.register_buffer("coordinates", self._cell_coordinates(columns, band), persistent=False)
        # Column -> pixel column inside its character cell, [W] (0 outside the text).
        cell_width = int(np.ceil(config.advance_px))
        self.register_buffer(
            "cell_column",
            torch.where(band >= 0, ((columns - columns.floor()) * config.advance_px).long(), 0),
            persistent=False,
        )
        # Small at start, so that AdamW's roughly lr-sized steps shape them within the first
        # hundred steps instead of the network learning to read fixed random codes.
        self.templates = (
            nn.Parameter(0.1 * torch.randn(VOCAB_SIZE, config.template_channels, config.height, cell_width))
            if config.template_channels and config.position_map_channels
            else None
        )
        self.unet = UNet2DConditionModel(
            sample_size=(config.height // config.unshuffle, config.width // config.unshuffle),
            in_channels=(3 + self.extra_channels) * r2,
            out_channels=3 * r2,
            block_out_channels=config.block_out_channels,
            layers_per_block=1,
            down_block_types=("DownBlock2D",)
            + ("CrossAttnDownBlock2D",) * (len(config.block_out_channels) - 1),
            up_block_types=("CrossAttnUpBlock2D",) * (len(config.block_out_channels) - 1) + ("UpBlock2D",),
            cross_attention_dim=config.d_model,
            attention_head_dim=config.attention_head_dim,
            norm_num_groups=8,
        )

    @property
    def extra_channels(self) -> int:
        """Input channels besides RGB: the position map, coordinate and template channels."""
        config = self.config
        if not config.position_map_channels:
            return 0
        return config.position_map_channels + 2 * config.cell_coordinates + config.template_channels

    def _cell_coordinates(self, columns: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """``[2, H, W]``: phase inside the character cell (0 outside the text), vertical -1..1."""
        phase = torch.where(band >= 0, columns - columns.floor(), torch.zeros_like(columns))  # [W]
        rows = torch.linspace(-1.0, 1.0, self.config.height)  # [H]
        return torch.stack(
            [phase.expand(self.config.height, -1), rows[:, None].expand(-1, self.config.width)]
        )

    def position_map(self, ids: torch.Tensor) -> torch.Tensor:
        """``[B, T]`` token ids -> ``[B, m (+2) (+k), H, W]``: character i's embedding in column
        band i (then the coordinate channels and the k template channels)."""
        chars = ids[:, 1 : 1 + self.config.max_text_len]  # [B, max_text_len]
        embedded = self.char_map(chars)  # [B, max_text_len, m]
        inside = (self.column_char >= 0).float()[None, :, None]  # [1, W, 1]
        per_column = embedded[:, self.column_char.clamp(min=0)] * inside  # [B, W, m]
        painted = [per_column.permute(0, 2, 1)[:, :, None, :].expand(-1, -1, self.config.height, -1)]
        if self.config.cell_coordinates:
            painted.append(self.coordinates.to(per_column.dtype).expand(len(ids), -1, -1, -1))  # [B, 2, H, W]
        if self.templates is not None:
            column_ids = chars[:, self.column_char.clamp(min=0)]  # [B, W]
            drawn = self.templates[column_ids, :, :, self.cell_column] * inside[..., None]  # [B, W, k, H]
            painted.append(drawn.permute(0, 2, 3, 1))  # [B, k, H, W]
        return torch.cat(painted, dim=1)

    def forward(
        self,
        pixels: torch.Tensor,
        sigma: torch.Tensor,
        context: torch.Tensor,
        ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity ``[B, 3, H, W]`` at ``pixels`` ``[B, 3, H, W]``.

        ``sigma`` is ``[B]`` in 0..1, ``context`` the text encoding ``[B, T, D]`` and ``ids``
        the token ids ``[B, T]`` (needed by the position map).
        """
        r = self.config.unshuffle
        if self.char_map is not None:
            pixels = torch.cat([pixels, self.position_map(ids).to(pixels.dtype)], dim=1)
        hidden = nn.functional.pixel_unshuffle(pixels, r)
        # The UNet's timestep embedding expects diffusers' 0..1000 timestep scale.
        out = self.unet(hidden, sigma * 1000.0, encoder_hidden_states=context).sample
        return nn.functional.pixel_shuffle(out, r)


def save_mini(model: MiniModel, folder: str | Path) -> None:
    """``config.json`` + ``model.safetensors`` (full weights, adapters merged if any), each
    written atomically; non-finite weights raise FloatingPointError before anything is written."""
    folder = Path(folder)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    require_finite(state, f"model {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    io.write_text(folder / "config.json", json.dumps(asdict(model.config), indent=2) + "\n")
    io.write_safetensors(folder / "model.safetensors", state)


def load_mini(folder: str | Path) -> MiniModel:
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"mini model folder {folder} has no {name}")
    remedy = f"delete {folder} and rerun pretrain_base to rebuild it"
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        raw["block_out_channels"] = tuple(raw["block_out_channels"])
        model = MiniModel(MiniConfig(**raw))
    except (ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"{folder / 'config.json'}: not a mini model config ({error!r}); {remedy}") from None
    try:
        model.load_state_dict(read_tensors(folder / "model.safetensors", remedy))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise SystemExit(
            f"{folder / 'model.safetensors'}: does not fit {folder / 'config.json'} ({first}); {remedy}"
        ) from None
    return model


@dataclass
class MiniPolicy:
    """The :class:`~pipeline.models.policy.Policy` of a :class:`MiniModel`.

    Args:
        model: the model (its text encoder stays frozen during RL).
        lora_rank: LoRA rank on the UNet's attention projections; 0 = full fine-tuning of
            the UNet (the reference policy is then a frozen copy of the initial weights).
        lora_alpha: LoRA scaling numerator.
        trainable: False for inference only (no adapter, no reference copy, nothing trains).
    """

    model: MiniModel
    lora_rank: int = 0
    lora_alpha: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    trainable: bool = True

    def __post_init__(self):
        config = self.model.config
        self.latent_shape = (3, config.height, config.width)
        self.tokenizer = MiniTokenizer(config.max_text_len)
        self.model.to(self.device)
        self.model.text_encoder.requires_grad_(False)
        if self.model.char_map is not None:
            self.model.char_map.requires_grad_(False)
        if self.model.templates is not None:
            self.model.templates.requires_grad_(False)
        self._frozen_copy = None
        if not self.trainable:
            self.model.requires_grad_(False).eval()
        elif self.lora_rank > 0:
            from peft import LoraConfig

            self.model.unet.requires_grad_(False)
            self.model.unet.add_adapter(
                LoraConfig(
                    r=self.lora_rank,
                    lora_alpha=self.lora_alpha or self.lora_rank,
                    init_lora_weights="gaussian",
                    target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                )
            )
        else:
            self._frozen_copy = copy.deepcopy(self.model.unet).requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        return self.model

    def encode(self, prompts: list[str]) -> tuple[Conditioning, Conditioning]:
        ids = self.tokenizer(prompts).to(self.device)
        null = torch.tensor([self.tokenizer.unconditional()] * len(prompts), device=self.device)
        with torch.no_grad():
            cond, uncond = self.model.text_encoder(ids), self.model.text_encoder(null)
        return Conditioning({"context": cond, "ids": ids}), Conditioning({"context": uncond, "ids": null})

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        return self.model(latents, sigma.to(latents.dtype), cond.tensors["context"], cond.tensors["ids"])

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        images = ((latents.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.unet.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def reference(self):
        if self.lora_rank > 0:
            self.model.unet.disable_adapters()
            try:
                yield
            finally:
                self.model.unet.enable_adapters()
        else:
            trained, self.model.unet = self.model.unet, self._frozen_copy
            try:
                yield
            finally:
                self.model.unet = trained
