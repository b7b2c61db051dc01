"""The policy interface every backend implements (mini, sd3, ...).

The sampler and the trainer only talk to this interface: encode prompts (with the
unconditional embedding for classifier-free guidance), predict the flow-matching velocity,
decode latents to images, list the trainable parameters and evaluate the reference policy
(adapter disabled, or the frozen initial weights).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch


@dataclass
class Conditioning:
    """Text conditioning of a batch: named tensors that all have the batch first."""

    tensors: dict[str, torch.Tensor]

    def __len__(self) -> int:
        return next(iter(self.tensors.values())).shape[0]

    def select(self, index: torch.Tensor | list[int]) -> Conditioning:
        """Rows ``index`` (repeats allowed): ``[B, ...] -> [len(index), ...]``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Conditioning({k: v[index.to(v.device)] for k, v in self.tensors.items()})

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        keys = parts[0].tensors.keys()
        return Conditioning({k: torch.cat([p.tensors[k] for p in parts]) for k in keys})


class Policy(Protocol):
    #: ``(C, H, W)`` of one latent (pixels for ``mini``).
    latent_shape: tuple[int, int, int]
    device: torch.device
    #: the module whose parameters are trained and checkpointed
    module: torch.nn.Module

    def encode(self, prompts: list[str]) -> tuple[Conditioning, Conditioning]:
        """``(conditional [B, ...], unconditional [B, ...])`` for ``prompts``."""

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """Velocity ``[B, C, H, W]`` at ``latents`` ``[B, C, H, W]``, noise levels ``sigma`` ``[B]``."""

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """RGB images uint8 ``[B, H, W, 3]``."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters RL updates (LoRA adapters, or every denoiser weight)."""

    def reference(self) -> AbstractContextManager[None]:
        """Inside this context :meth:`velocity` evaluates the reference (pre-RL) policy."""


def trainable_state(policy: Policy) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every trainable parameter, for checkpoints."""
    ids = {id(p) for p in policy.trainable_parameters()}
    for name, param in policy.module.named_parameters():
        if id(param) in ids:
            yield name, param


def add_float32_lora(module: torch.nn.Module, rank: int, alpha: int, targets: tuple[str, ...]) -> None:
    """Add a gaussian-initialised LoRA adapter (peft) on ``targets`` of a frozen ``module``.

    Adapter weights train in float32 whatever the base dtype: bf16 updates of small LoRA
    weights lose most of their mantissa.
    """
    from peft import LoraConfig

    module.add_adapter(
        LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
    )
    for param in module.parameters():
        if param.requires_grad:
            param.data = param.data.float()
