"""Resumable training checkpoints in safetensors (never pickle).

A checkpoint folder holds ``weights.safetensors`` (named tensors), ``optimizer.safetensors``
(the optimizer's per-parameter state, flattened to ``<index>.<key>`` names) and
``state.json`` (step, counters, history, the optimizer's hyper-parameters and a config hash).
It is written to a temporary folder and renamed into place, so a kill at any moment leaves
the previous checkpoint intact. ``state.json`` also lists the tensor names of both files, so that
a resume restores every one of them or fails: a file that cannot be read, a missing
``state.json`` or counter, or a tensor file that lost names stops the job with the file's path
and the remedy (delete the checkpoint folder to start the run afresh), never a partial resume.

A training run's snapshots (its weights after some iterations, for the equal-NFE
evaluation) are ``iteration_NNNN.safetensors`` files in a folder: :func:`snapshot_name` names
one, :func:`snapshot_files` lists a folder's by iteration.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from pipeline.runtime import io


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


def read_tensors(path: str | Path, remedy: str) -> dict[str, torch.Tensor]:
    """The tensors of safetensors file ``path``; one that is missing or cannot be read stops the
    job with its path, the reason and ``remedy``."""
    try:
        return load_file(path)
    except (SafetensorError, OSError) as error:
        raise SystemExit(f"{path}: cannot be read as safetensors ({error}); {remedy}") from None


def restart_remedy(folder: Path) -> str:
    return f"delete {folder} to start the run afresh"


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
    io.write_safetensors(
        tmp / "weights.safetensors", {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    )
    io.write_safetensors(tmp / "optimizer.safetensors", opt_tensors)
    names = {"weights": sorted(weights), "optimizer": sorted(opt_tensors)}
    io.write_text(tmp / "state.json", json.dumps(state | {"param_groups": groups, "tensors": names}) + "\n")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    folder: str | Path,
    optimizer: torch.optim.Optimizer,
    config_hash: str | None = None,
    counter: str = "step",
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """``(weights, state)`` from ``folder`` with ``optimizer`` restored, or None if absent.

    With ``config_hash``, a checkpoint written under another config also gives None, and
    ``optimizer`` is left untouched (its parameters may not even have the saved shapes).
    ``counter`` is the state key of the units done (``step``, ``iteration``). A checkpoint that
    exists but cannot be restored whole stops the job (module docstring).
    """
    folder = Path(folder)
    if not (folder / "state.json").is_file():
        old = folder.with_name(folder.name + ".old")  # a kill between the two renames
        if (old / "state.json").is_file():
            folder = old
        elif folder.is_dir() and any(folder.iterdir()):
            raise SystemExit(
                f"{folder / 'state.json'} is missing, so the checkpoint in {folder} cannot be resumed; "
                f"{restart_remedy(folder)}"
            )
        else:
            return None
    remedy = restart_remedy(folder)
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"{folder / 'state.json'}: cannot be read as JSON ({error}); {remedy}") from None
    missing = [key for key in (counter, "param_groups") if not isinstance(state, dict) or key not in state]
    if missing:
        raise SystemExit(f"{folder / 'state.json'}: no {' or '.join(map(repr, missing))}; {remedy}")
    if config_hash is not None and state.get("config_hash") != config_hash:
        return None
    weights = read_tensors(folder / "weights.safetensors", remedy)
    flat = read_tensors(folder / "optimizer.safetensors", remedy)
    for name, tensors in (("weights", weights), ("optimizer", flat)):
        recorded = state.get("tensors", {}).get(name)
        lost = sorted(set(recorded) - set(tensors)) if recorded is not None else []
        if lost:
            raise SystemExit(
                f"{folder / f'{name}.safetensors'}: {len(lost)} of the {len(recorded)} tensors that "
                f"state.json records are missing (e.g. {lost[0]!r}); {remedy}"
            )
    per_param: dict[int, dict] = {}
    for name, tensor in flat.items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = tensor
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": state.pop("param_groups")})
    except (ValueError, KeyError, RuntimeError) as error:
        raise SystemExit(
            f"{folder / 'optimizer.safetensors'}: does not fit the optimizer ({error}); {remedy}"
        ) from None
    return weights, state


SNAPSHOTS = "snapshots"


def snapshot_store(checkpoint_dir: Path) -> Path:
    """Where a run keeps its snapshots until it ends: beside its checkpoint, which is replaced
    whole at every save, and outside the declared ``snapshots/`` output, which Snakemake
    clears before a rerun that resumes."""
    return checkpoint_dir.with_name("checkpoint_snapshots")


def drop_snapshots_after(folder: Path, iteration: int) -> None:
    """Remove the snapshots of iterations after ``iteration`` (a run that starts afresh, or
    resumes from an earlier checkpoint, writes them again)."""
    for done, path in snapshot_files(folder).items():
        if done > iteration:
            path.unlink()


@contextmanager
def interrupt_note(checkpoint_dir: Path) -> Iterator[None]:
    """Turn Ctrl-C (KeyboardInterrupt) into a one-line exit that says whether a checkpoint in
    ``checkpoint_dir`` is kept for a rerun to resume from: checkpoints are written by rename,
    so an interrupt never leaves one half-written."""
    try:
        yield
    except KeyboardInterrupt:
        kept = (
            f"the last checkpoint in {checkpoint_dir} is kept; rerun to resume from it"
            if (checkpoint_dir / "state.json").is_file()
            else f"no checkpoint was complete yet in {checkpoint_dir}; a rerun starts afresh"
        )
        raise SystemExit(f"interrupted (Ctrl-C): {kept}") from None
