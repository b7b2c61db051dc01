"""Exponential moving average of the trainable parameters (Flow-GRPO: decay 0.9)."""

from __future__ import annotations

import torch


class Ema:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimizer step."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.parameters, self.decay = parameters, decay
        self.shadow = [p.detach().clone().float() for p in parameters]

    @torch.no_grad()
    def update(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.mul_(self.decay).add_(param.detach().float(), alpha=1 - self.decay)

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            param.copy_(shadow.to(param.dtype))
