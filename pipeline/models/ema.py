"""Exponential moving average of the trainable parameters, with Flow-GRPO's schedule as an option
(decay 0.9, an update every 8 optimizer steps, a warm-up that starts the average short)."""

from __future__ import annotations

import torch

PREFIX = "ema."  # checkpoint names of the averages, beside the weights they average


def without_averages(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's ``weights`` less the entries :meth:`Ema.checkpoint_tensors` added."""
    return {k: v for k, v in weights.items() if not k.startswith(PREFIX)}


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The decay of the update after ``step`` optimizer steps: ``decay``, or with ``warmup``
    Flow-GRPO's ``min((1 + step) / (10 + step), decay)``, so that the first updates move the
    average most (0.18 after 1 step, 0.5 after 8, ``decay`` from step 80 at 0.9)."""
    return min((1 + step) / (10 + step), decay) if warmup else decay


class Ema:
    """``shadow = d * shadow + (1 - d) * param``, ``d`` from :func:`ema_decay_at`, after the
    optimizer steps ``s`` (counted from 1) where ``(s + 1) % every == 0``: every step when
    ``every`` is 1; Flow-GRPO's 8 updates after steps 7, 15, 23, ..."""

    def __init__(
        self, parameters: list[torch.nn.Parameter], decay: float, every: int = 1, warmup: bool = False
    ):
        self.parameters, self.decay, self.every, self.warmup = parameters, decay, every, warmup
        self.shadow = [p.detach().clone().float() for p in parameters]
        self.steps = 0  # optimizer steps seen

    @torch.no_grad()
    def update(self) -> None:
        """Call after every optimizer step; averages on the steps the schedule picks."""
        self.steps += 1
        if (self.steps + 1) % self.every:
            return
        decay = ema_decay_at(self.steps, self.decay, self.warmup)
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.mul_(decay).add_(param.detach().float(), alpha=1 - decay)

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The averages under checkpoint names ``ema.<parameter index>``, and the step count."""
        tensors = {f"{PREFIX}{i}": shadow for i, shadow in enumerate(self.shadow)}
        return tensors | {f"{PREFIX}steps": torch.tensor([self.steps], dtype=torch.int64)}

    def restore(self, weights: dict[str, torch.Tensor]) -> None:
        """Take the averages and the step count back from a checkpoint's ``weights``."""
        self.shadow = [weights[f"{PREFIX}{i}"].float().clone() for i in range(len(self.shadow))]
        self.steps = int(weights[f"{PREFIX}steps"].item())

    @torch.no_grad()
    def copy_to_parameters(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            param.copy_(shadow.to(param.dtype))
