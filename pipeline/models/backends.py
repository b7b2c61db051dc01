"""Build the policy of a configured backend (mini, sd3 or flux); each backend's module is
imported only when it is asked for."""

from __future__ import annotations

import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


BACKEND_OPTIONS = ("resolution", "dtype", "distilled_guidance", "require_gpu")


def backend_options(model: dict) -> dict:
    """The :func:`load_policy` keywords in a stage's ``model`` slice (pipeline.workflow.stage_params:
    none for mini, whose sizes live in its folder)."""
    return {key: model[key] for key in BACKEND_OPTIONS if key in model}


def check_gpu(device: torch.device) -> None:
    """Stop a job that ``model.require_gpu`` wants on a GPU but would run on ``device``, saying why."""
    reasons = [f"device {device}"]
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU build (install a CUDA build: docs/guide.md)")
    elif not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        reasons.append(f"torch sees no CUDA device (CUDA_VISIBLE_DEVICES={visible!r})")
    raise SystemExit(f"model.require_gpu is true, but this job would run on the CPU: {'; '.join(reasons)}")


def load_policy(
    backend: str,
    path: str | Path,
    *,
    lora_rank: int = 0,
    lora_alpha: int = 0,
    resolution: int = 512,
    dtype: str = "float32",
    device: str | None = None,
    trainable: bool = True,
    gradient_checkpointing: bool = False,
    distilled_guidance: float = 3.5,
    require_gpu: bool = False,
):
    """Build the policy of ``backend`` from a local folder (the mini base model, an SD3 or a
    FLUX folder). ``distilled_guidance`` is FLUX.1-dev's guidance-embedding value (flux only).
    With ``require_gpu`` (``model.require_gpu``) a job that would run on the CPU stops first."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if require_gpu and device.type != "cuda":
        check_gpu(device)
    if backend == "mini":
        from pipeline.models.mini import MiniPolicy, load_mini

        return MiniPolicy(
            load_mini(path), lora_rank=lora_rank, lora_alpha=lora_alpha, device=device, trainable=trainable
        )
    common = dict(
        device=device,
        dtype=DTYPES[dtype],
        resolution=resolution,
        lora_rank=lora_rank if trainable else 0,
        lora_alpha=lora_alpha,
        gradient_checkpointing=gradient_checkpointing,
    )
    if backend == "sd3":
        from pipeline.models.sd3 import SD3Policy

        return SD3Policy.from_pretrained(path, **common)
    if backend == "flux":
        from pipeline.models.flux import FluxPolicy

        return FluxPolicy.from_pretrained(path, distilled_guidance=distilled_guidance, **common)
    raise ValueError(f"model.backend {backend!r}: expected 'mini', 'sd3' or 'flux'")
