"""Resumable training checkpoints in safetensors (never pickle).

A checkpoint folder holds ``weights.safetensors`` (named tensors), ``optimizer.safetensors``
(the optimizer's per-parameter state, flattened to ``<index>.<key>`` names) and
``state.json`` (step, counters, history, the optimizer's hyper-parameters and a config hash).
It is written to a temporary folder and renamed into place, so a kill at any moment leaves
the previous checkpoint intact.

A training run's snapshots (its weights after some iterations, for the equal-NFE
evaluation) are ``iteration_NNNN.safetensors`` files in a folder: :func:`snapshot_name` names
one, :func:`snapshot_files` lists a folder's by iteration.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def snapshot_name(iteration: int) -> str:
    return f"iteration_{iteration:04d}.safetensors"


def snapshot_files(folder: Path) -> dict[int, Path]:
    """Iteration -> snapshot file of every snapshot in ``folder`` (none if it does not exist)."""
    return {int(p.stem.removeprefix("iteration_")): p for p in sorted(folder.glob("iteration_*.safetensors"))}


def require_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Raise FloatingPointError naming ``what`` and the first tensors that hold NaN or inf
    (called before anything is written, so a non-finite model never reaches disk)."""
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise FloatingPointError(f"{what}: non-finite values in {shown}; nothing written")


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    return tensors, state["param_groups"]


def save_checkpoint(
    folder: str | Path, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, state: dict
) -> None:
    """Atomically replace the checkpoint in ``folder``; non-finite weights or optimizer state
    raise FloatingPointError and leave the previous checkpoint in place."""
    folder = Path(folder)
    opt_tensors, groups = _flatten_optimizer(optimizer)
    require_finite(weights, f"checkpoint {folder}")
    require_finite(opt_tensors, f"checkpoint {folder} (optimizer state)")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, tmp / "weights.safetensors")
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(state | {"param_groups": groups}) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    folder: str | Path, optimizer: torch.optim.Optimizer, config_hash: str | None = None
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(weights, state)`` from ``folder`` with ``optimizer`` restored, or None if absent.

    With ``config_hash``, a checkpoint written under another config also gives None, and
    ``optimizer`` is left untouched (its parameters may not even have the saved shapes).
    """
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")  # a kill between the two renames
        if not (old / "state.json").is_file():
            return None
        folder = old
    state = json.loads((folder / "state.json").read_text())
    if config_hash is not None and state.get("config_hash") != config_hash:
        return None
    flat = load_file(folder / "optimizer.safetensors")
    per_param: dict[int, dict] = {}
    for name, tensor in flat.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    return load_file(folder / "weights.safetensors"), state
