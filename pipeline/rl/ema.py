"""Exponential moving average of the trainable parameters (Flow-GRPO: decay 0.9)."""

from __future__ import annotations

import torch

PREFIX = "ema."  # checkpoint names of the averages, beside the weights they average


def without_averages(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's ``weights`` less the entries :meth:`Ema.checkpoint_tensors` added."""
    return {k: v for k, v in weights.items() if not k.startswith(PREFIX)}


class Ema:
    """``shadow = decay * shadow + (1 - decay) * param`` after every optimizer step."""

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float):
        self.parameters, self.decay = parameters, decay
        self.shadow = [p.detach().clone().float() for p in parameters]

    @torch.no_grad()
    def update(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.mul_(self.decay).add_(param.detach().float(), alpha=1 - self.decay)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The averages under checkpoint names ``ema.<parameter index>``."""
        return {f"{PREFIX}{i}": shadow for i, shadow in enumerate(self.shadow)}

    def restore(self, weights: dict[str, torch.Tensor]) -> None:
        """Take the averages back from a checkpoint's ``weights`` (:meth:`checkpoint_tensors`)."""
        self.shadow = [weights[f"{PREFIX}{i}"].float().clone() for i in range(len(self.shadow))]

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            param.copy_(shadow.to(param.dtype))
