"""Data-parallel GRPO across processes (one per GPU): ranks, prompt shards, gathers, gradients.

``pipeline.stages.train --nproc N [--nnodes M]`` re-launches itself through torchrun
(:mod:`pipeline.rl.launch`); every worker joins the process group (:func:`init`) and, per
iteration:

1. samples the forests of its contiguous shard of the iteration's prompts
   (:func:`prompt_shard`), each prompt with a seed of its own position in the global batch,
   so a prompt's tree does not depend on which rank samples it;
2. scores its leaves, then gathers every rank's forest index arrays and scores
   (:func:`gather_forest`): advantages and trained edges are computed on the global batch on
   every rank, identically, so group statistics are exact;
3. trains on its own edges: each optimizer step covers one chunk of a global shuffle of the
   global trained edges; a rank weights its edges' losses by ``1 / (edges in the global
   chunk)`` and the gradients are *summed* over ranks (:func:`sum_gradients`), which is the
   gradient of the chunk's mean loss, as one process on the whole batch computes it. A plain
   mean of per-rank means would not be: ranks train different numbers of edges (edges with
   zero advantage are dropped), so their means carry different weights.

Gradients are all-reduced explicitly rather than through ``DistributedDataParallel``: the
policy calls its module through its own interface (and swaps or disables it for the
reference policy), and a rank can run fewer backward passes in a step than another (even
none), which DDP's per-backward hooks cannot match across ranks. Parameters start equal
(:func:`broadcast_parameters`) and every rank applies the same summed gradient, so they stay
equal. Single-process training runs the same code with one rank.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from pipeline.sampling.tree import TreeRollout

# TreeRollout fields that hold node ids (-1 = none) or prompt indices: shifted when merging.
_NODE_IDS = ("node_parent", "edge_parent", "edge_child", "leaf_nodes")
_PROMPT_IDS = ("node_prompt", "edge_prompt", "leaf_prompt")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_size: int = 1  # the processes on this node, which share its CPU threads

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that logs, prints and writes files."""
        return self.rank == 0


SINGLE = Ranks()  # training in one process


def is_worker() -> bool:
    """Whether torchrun started this process (it sets these variables)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def init(device: str | None) -> tuple[Ranks, torch.device]:
    """This process's ranks and device; joins the process group when run by torchrun.

    A torchrun worker trains on ``cuda:LOCAL_RANK`` (NCCL) when CUDA is used and on the CPU
    (gloo) otherwise. ``device``: ``cpu``, ``cuda`` or None (CUDA if available).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not is_worker():
        return SINGLE, device
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"]))
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)  # object collectives stage through the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ranks, device


def shutdown(ranks: Ranks) -> None:
    if ranks.world_size > 1:
        dist.destroy_process_group()


def check_shardable(prompts_per_iteration: int, world_size: int) -> None:
    """Every rank samples the same number of prompts (equal forests, equal work)."""
    if prompts_per_iteration % world_size:
        raise ValueError(
            f"train.prompts_per_iteration {prompts_per_iteration} is not divisible by the "
            f"{world_size} training processes (train.gpus x train.nodes): every GPU samples an equal share"
        )


def prompt_shard(prompts_per_iteration: int, ranks: Ranks) -> slice:
    """Positions ``[r k, (r + 1) k)`` of the iteration's prompts that rank ``r`` samples,
    ``k = prompts_per_iteration / world_size``."""
    check_shardable(prompts_per_iteration, ranks.world_size)
    size = prompts_per_iteration // ranks.world_size
    return slice(ranks.rank * size, (ranks.rank + 1) * size)


def merge_forests(parts: list[TreeRollout]) -> TreeRollout:
    """One forest of several: the prompts of part ``k`` follow those of parts ``< k``.

    Node ids and prompt indices of part ``k`` are shifted by the nodes and prompts before it;
    edge, node and leaf arrays are concatenated in part order; ``nfe`` is summed. ``images``
    is None if any part has none.
    """
    node_offsets = np.cumsum([0] + [len(p.node_prompt) for p in parts[:-1]])
    prompt_offsets = np.cumsum([0] + [len(p.prompts) for p in parts[:-1]])
    merged = {}
    for f in dataclasses.fields(TreeRollout):
        values = [getattr(p, f.name) for p in parts]
        if f.name in _NODE_IDS:
            values = [torch.where(v >= 0, v + int(o), v) for v, o in zip(values, node_offsets, strict=True)]
        elif f.name in _PROMPT_IDS:
            values = [v + int(o) for v, o in zip(values, prompt_offsets, strict=True)]
        if f.name == "prompts":
            merged[f.name] = [prompt for value in values for prompt in value]
        elif f.name == "nfe":
            merged[f.name] = sum(values)
        elif f.name == "images":
            merged[f.name] = None if any(v is None for v in values) else np.concatenate(values)
        else:
            merged[f.name] = torch.cat(values)
    return TreeRollout(**merged)


def gather_objects(obj, ranks: Ranks) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (picklable objects)."""
    if ranks.world_size == 1:
        return [obj]
    out = [None] * ranks.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_forest(
    rollout: TreeRollout, scores: pd.DataFrame, ranks: Ranks
) -> tuple[TreeRollout, pd.DataFrame, int]:
    """The global batch's forest and leaf scores (ranks in order), and this rank's first edge.

    Latents and images stay on their rank: the forest's ``latents``/``next_latents`` are
    ``[E, 0]`` and its ``images`` None; its index arrays, sigmas, log-probabilities and
    ``nfe`` (summed over ranks) are complete. ``scores``: ``[L_rank]`` rows -> ``[L]`` rows.
    """
    edges = len(rollout.edge_child)
    light = dataclasses.replace(
        rollout, latents=torch.empty(edges, 0), next_latents=torch.empty(edges, 0), images=None
    )
    parts = gather_objects((light, scores), ranks)
    first_edge = sum(len(forest.edge_child) for forest, _ in parts[: ranks.rank])
    forest = merge_forests([forest for forest, _ in parts])
    return forest, pd.concat([table for _, table in parts], ignore_index=True), first_edge


def agree(flag: bool, ranks: Ranks) -> bool:
    """True on every rank if it is true on any (a decision all ranks must take together)."""
    return any(gather_objects(flag, ranks))


def broadcast_parameters(parameters: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Give every rank rank 0's values."""
    if ranks.world_size > 1:
        with torch.no_grad():
            for param in parameters:
                dist.broadcast(param.data, src=0)


def sum_gradients(parameters: list[torch.nn.Parameter], ranks: Ranks) -> None:
    """Replace every gradient by its sum over ranks; a missing gradient counts as zero, and
    one missing on every rank stays missing (the optimizer skips it, as in one process).

    One all-reduce of the flattened gradients and a presence count per parameter.
    """
    if ranks.world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    present = torch.tensor([float(p.grad is not None) for p in parameters], device=grads[0].device)
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), present])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    summed, counts = flat[: -len(parameters)], flat[-len(parameters) :].tolist()
    for param, value, count in zip(parameters, summed.split([g.numel() for g in grads]), counts, strict=True):
        param.grad = value.view_as(param).to(param.dtype) if count > 0 else None


def barrier(ranks: Ranks) -> None:
    if ranks.world_size > 1:
        dist.barrier()
