"""Tree-based trajectory sampling with shared prefixes (Multi-GRPO's temporal groups).

Every latent state is a node: the roots are initial noises (depth 0) and the node at depth
``d`` is the state after ``d`` denoising steps; an edge is one step from a node to a child.
Between branching steps a node has one child; at a branching step it has ``b`` children
drawn from the same SDE mean with independent noise, so the prefix up to that point is
computed once for all its descendants. All nodes at a depth — every prompt's — go through
the model in batched calls (chunked to ``max_batch`` rows), one call per node and step.

The rollout keeps, for every edge, what GRPO training needs: the latents before and after,
the step index and sigmas, the old log-probability and whether the step was stochastic
(trainable), with parent and child node ids and the prompt index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.policy import Conditioning, Policy
from pipeline.sampling.schedule import TreeSchedule
from pipeline.sampling.sde import sde_step_with_logprob


@dataclass
class TreeRollout:
    """A sampled forest: ``N`` nodes, ``E = N - roots`` edges, ``L`` leaves.

    Node arrays ``[N]``: ``node_prompt``, ``node_depth``, ``node_parent`` (-1 for roots).
    Edge arrays ``[E]``: ``edge_parent``, ``edge_child``, ``edge_step``, ``edge_prompt``,
    ``sigma``, ``sigma_next``, ``log_prob``, ``trainable``; ``latents`` and
    ``next_latents`` are ``[E, C, H, W]`` float32 on the CPU.
    Leaves ``[L]``: ``leaf_nodes``, ``leaf_prompt``; ``images`` uint8 ``[L, H, W, 3]``.
    ``nfe``: transformer rows evaluated (a guided evaluation counts 2 rows).
    """

    prompts: list[str]
    node_prompt: torch.Tensor
    node_depth: torch.Tensor
    node_parent: torch.Tensor
    edge_parent: torch.Tensor
    edge_child: torch.Tensor
    edge_step: torch.Tensor
    edge_prompt: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    log_prob: torch.Tensor
    trainable: torch.Tensor
    latents: torch.Tensor
    next_latents: torch.Tensor
    leaf_nodes: torch.Tensor
    leaf_prompt: torch.Tensor
    images: np.ndarray
    nfe: int = 0


def guided_velocity(
    policy: Policy,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    guidance: float,
    max_batch: int,
) -> tuple[torch.Tensor, int]:
    """Classifier-free-guided velocity ``[B, C, H, W]`` and the transformer rows it cost.

    With ``guidance == 1`` only the conditional branch runs. Otherwise each chunk stacks
    unconditional and conditional rows into one call: ``v = v_u + g (v_c - v_u)``.
    """
    rows_per_item = 1 if guidance == 1 else 2
    chunk = max(1, max_batch // rows_per_item)
    out = []
    for start in range(0, latents.shape[0], chunk):
        x, s = latents[start : start + chunk], sigma[start : start + chunk]
        c = cond.select(list(range(start, start + x.shape[0])))
        if guidance == 1:
            out.append(policy.velocity(x, s, c))
            continue
        u = uncond.select(list(range(start, start + x.shape[0])))
        v = policy.velocity(torch.cat([x, x]), torch.cat([s, s]), Conditioning.cat([u, c]))
        v_uncond, v_cond = v.chunk(2)
        out.append(v_uncond + guidance * (v_cond - v_uncond))
    return torch.cat(out), rows_per_item * latents.shape[0]


@torch.no_grad()
def sample_tree(
    policy: Policy,
    prompts: list[str],
    schedule: TreeSchedule,
    sigmas: torch.Tensor,
    *,
    guidance: float = 1.0,
    noise_level: float = 0.7,
    sde_type: str = "sde",
    max_batch: int = 64,
    seed: int = 0,
    decode: bool = True,
) -> TreeRollout:
    """Sample a forest of ``schedule.roots`` trees per prompt (module docstring).

    Args:
        policy: the model.
        prompts: ``P`` prompts.
        schedule: branching schedule; ``schedule.num_steps`` must be ``len(sigmas) - 1``.
        sigmas: ``[num_steps + 1]`` from 1 to 0.
        guidance: classifier-free guidance scale (1 = off).
        noise_level: SDE noise level ``a`` on stochastic steps.
        sde_type: ``"sde"`` or ``"cps"``.
        max_batch: most rows per model call.
        seed: the same seed gives the same tree (noise is drawn on the CPU, in node order).
        decode: decode the leaves to images.
    """
    if len(sigmas) != schedule.num_steps + 1:
        raise ValueError(f"{len(sigmas)} sigmas for {schedule.num_steps} steps (expected num_steps + 1)")
    device = policy.device
    generator = torch.Generator().manual_seed(seed)
    cond, uncond = policy.encode(prompts)
    n_roots = len(prompts) * schedule.roots
    x = torch.randn((n_roots, *policy.latent_shape), generator=generator).to(device)

    node_prompt = torch.arange(len(prompts)).repeat_interleave(schedule.roots)
    node_depth = torch.zeros(n_roots, dtype=torch.long)
    node_parent = torch.full((n_roots,), -1, dtype=torch.long)
    active = torch.arange(n_roots)
    edges: dict[str, list[torch.Tensor]] = {
        k: []
        for k in (
            "edge_parent",
            "edge_child",
            "edge_step",
            "edge_prompt",
            "sigma",
            "sigma_next",
            "log_prob",
            "trainable",
            "latents",
            "next_latents",
        )
    }
    nfe = 0
    for step in range(schedule.num_steps):
        rows = node_prompt[active]
        sigma = sigmas[step].expand(len(active)).to(device)
        v, cost = guided_velocity(
            policy, x, sigma, cond.select(rows), uncond.select(rows), guidance, max_batch
        )
        nfe += cost
        factor, stochastic = schedule.factor(step), schedule.is_stochastic(step)
        parents = active.repeat_interleave(factor)
        x_rep, v_rep = x.repeat_interleave(factor, dim=0), v.repeat_interleave(factor, dim=0)
        noise = torch.randn(x_rep.shape, generator=generator).to(device) if stochastic else None
        result = sde_step_with_logprob(
            v_rep,
            x_rep,
            sigmas[step],
            sigmas[step + 1],
            noise_level if stochastic else 0.0,
            sde_type=sde_type,
            noise=noise,
        )
        children = torch.arange(len(node_prompt), len(node_prompt) + len(parents))
        node_prompt = torch.cat([node_prompt, node_prompt[parents]])
        node_depth = torch.cat([node_depth, torch.full((len(parents),), step + 1, dtype=torch.long)])
        node_parent = torch.cat([node_parent, parents])
        for key, value in (
            ("edge_parent", parents),
            ("edge_child", children),
            ("edge_step", torch.full((len(parents),), step)),
            ("edge_prompt", node_prompt[parents]),
            ("sigma", sigmas[step].expand(len(parents))),
            ("sigma_next", sigmas[step + 1].expand(len(parents))),
            ("log_prob", result.log_prob.cpu()),
            ("trainable", torch.full((len(parents),), stochastic)),
            ("latents", x_rep.float().cpu()),
            ("next_latents", result.prev_sample.cpu()),
        ):
            edges[key].append(value)
        x, active = result.prev_sample.to(x.dtype), children
    images = (
        np.concatenate([policy.decode(x[i : i + max_batch]) for i in range(0, len(x), max_batch)])
        if decode
        else None
    )
    return TreeRollout(
        prompts=list(prompts),
        node_prompt=node_prompt,
        node_depth=node_depth,
        node_parent=node_parent,
        **{k: torch.cat(v) for k, v in edges.items()},
        leaf_nodes=active,
        leaf_prompt=node_prompt[active],
        images=images,
        nfe=nfe,
    )
