"""A policy's trainable weights as files: the one loader and writer that training (checkpoints,
snapshots, the result), evaluation and the benches share.

A weights file holds exactly the trainable parameters (the LoRA adapter, or the whole denoiser
without one), by name. Loading checks the names and shapes before copying anything: a partial
restore would train on, sample or save weights the file never held.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.models.policy import trainable_state
from pipeline.runtime import io
from pipeline.runtime.checkpoint import read_tensors, require_finite


def trainable_weights(policy) -> dict[str, torch.Tensor]:
    """``{name: tensor}`` of ``policy``'s trainable parameters (detached, not copied)."""
    return {name: param.detach() for name, param in trainable_state(policy)}


def load_trainable_weights(policy, weights: dict[str, torch.Tensor], source: Path, remedy: str) -> None:
    """Copy ``weights`` (read from ``source``) into every trainable parameter of ``policy``. A
    file that lacks one, or holds a tensor of another name or shape, stops the job with
    ``source``, the problem and ``remedy``, before any parameter changes."""
    trainable = dict(trainable_state(policy))
    missing, unknown = sorted(set(trainable) - set(weights)), sorted(set(weights) - set(trainable))
    if missing or unknown:
        problems = [f"{len(missing)} of {len(trainable)} trainable parameters missing"] if missing else []
        problems += [f"{len(unknown)} tensors that match no trainable parameter"] if unknown else []
        raise SystemExit(f"{source}: {'; '.join(problems)} (e.g. {(missing or unknown)[0]!r}); {remedy}")
    for name, param in trainable.items():
        if param.shape != weights[name].shape:
            raise SystemExit(
                f"{source}: {name!r} has shape {tuple(weights[name].shape)}, the model's is "
                f"{tuple(param.shape)}; {remedy}"
            )
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name])


def load_weights_file(policy, path: Path, remedy: str) -> None:
    """:func:`load_trainable_weights` of the safetensors file ``path``."""
    load_trainable_weights(policy, read_tensors(path, remedy), path, remedy)


def save_weights(path: Path, weights: dict[str, torch.Tensor]) -> None:
    """A safetensors file of finite tensors, written atomically."""
    weights = {k: v.contiguous().cpu() for k, v in weights.items()}
    require_finite(weights, f"{path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_safetensors(path, weights)
