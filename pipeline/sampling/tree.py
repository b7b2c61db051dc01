"""Tree-based trajectory sampling with shared prefixes (Multi-GRPO's temporal groups).

Every latent state is a node: the roots are initial noises (depth 0) and the node at depth
``d`` is the state after ``d`` denoising steps; an edge is one step from a node to a child.
Between branching steps a node has one child; at a branching step it has ``b`` children
drawn from the same SDE mean with independent noise, so the prefix up to that point is
computed once for all its descendants. All nodes at a depth — every prompt's — go through
the model in batched calls (chunked to ``max_batch`` rows), one call per node and step.
With one seed per prompt, each prompt draws its noise from its own generator, so a prompt's
forest is the same whichever prompts it is sampled with (up to the float rounding of a
different batch size); the returned forest is always laid out prompt by prompt.

The rollout keeps, for every edge, what GRPO training needs: the latents before and after,
the step index and sigmas, the old log-probability and whether the step was stochastic
(trainable), with parent and child node ids and the prompt index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.models.policy import Conditioning, Policy
from pipeline.sampling.schedule import flow_sigmas
from pipeline.sampling.sde import sde_step_with_logprob
from pipeline.sampling.tree_schedule import TreeSchedule


@dataclass
class TreeRollout:
    """A sampled forest: ``N`` nodes, ``E = N - roots`` edges, ``L`` leaves.

    Node arrays ``[N]``: ``node_prompt``, ``node_depth``, ``node_parent`` (-1 for roots).
    Edge arrays ``[E]``: ``edge_parent``, ``edge_child``, ``edge_step``, ``edge_prompt``,
    ``sigma``, ``sigma_next``, ``noise_level`` (the SDE's ``a``, 0 on ODE steps), ``log_prob``,
    ``trainable``; ``latents`` and
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
    noise_level: torch.Tensor
    log_prob: torch.Tensor
    trainable: torch.Tensor
    latents: torch.Tensor
    next_latents: torch.Tensor
    leaf_nodes: torch.Tensor
    leaf_prompt: torch.Tensor
    images: np.ndarray | None
    nfe: int = 0

    def leaf_edges(self) -> torch.Tensor:
        """``[L]``: the edge into each leaf (its ``next_latents`` are the leaf's latents)."""
        edge_into = torch.full((len(self.node_prompt),), -1, dtype=torch.long)
        edge_into[self.edge_child] = torch.arange(len(self.edge_child))
        return edge_into[self.leaf_nodes]


# The TreeRollout fields indexed by edge.
EDGE_FIELDS = (
    "edge_parent",
    "edge_child",
    "edge_step",
    "edge_prompt",
    "sigma",
    "sigma_next",
    "noise_level",
    "log_prob",
    "trainable",
    "latents",
    "next_latents",
)


def prompts_per_call(max_batch: int, guidance: float) -> int:
    """Prompts in one model call of ``max_batch`` rows: half as many under CFG (two rows each)."""
    return max_batch if guidance == 1 else max(1, max_batch // 2)


def guided_velocity(
    policy: Policy,
    latents: torch.Tensor,
    sigma: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    guidance: float,
    max_batch: int,
    detach_uncond: bool = False,
) -> tuple[torch.Tensor, int]:
    """Classifier-free-guided velocity ``[B, C, H, W]`` and the transformer rows it cost.

    With ``guidance == 1`` only the conditional branch runs. Otherwise each chunk stacks
    unconditional and conditional rows into one call: ``v = v_u + g (v_c - v_u)``; with
    ``detach_uncond`` ``v_u`` carries no gradient, so ``dv = g dv_c`` (Flow-GRPO's loss).
    """
    rows_per_item = 1 if guidance == 1 else 2
    chunk = prompts_per_call(max_batch, guidance)
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
        if detach_uncond:
            v_uncond = v_uncond.detach()
        out.append(v_uncond + guidance * (v_cond - v_uncond))
    return torch.cat(out), rows_per_item * latents.shape[0]


def draw_noise(generators: list[torch.Generator], rows: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``[rows, *shape]`` standard normal noise on the CPU.

    One generator: one draw in row order. ``P`` generators (one per prompt): the rows are
    prompt-major (``rows / P`` per prompt) and each prompt's block comes from its own
    generator, exactly as a call for that prompt alone would draw it.
    """
    if len(generators) == 1:
        return torch.randn((rows, *shape), generator=generators[0])
    per_prompt, rest = divmod(rows, len(generators))
    if rest:
        raise ValueError(f"{rows} noise rows do not split evenly over {len(generators)} prompts")
    return torch.cat([torch.randn((per_prompt, *shape), generator=g) for g in generators])


def group_by_prompt(rollout: TreeRollout) -> TreeRollout:
    """The same forest with nodes and edges reordered prompt by prompt (stable, so each
    prompt keeps its own creation order) and node ids renumbered to match.

    This is the layout of the per-prompt forests concatenated in prompt order
    (:func:`pipeline.rl.distributed.merge_forests`), whatever batch sampled them.
    """
    node_order = torch.argsort(rollout.node_prompt, stable=True)
    edge_order = torch.argsort(rollout.edge_prompt, stable=True)
    new_id = torch.empty_like(node_order)
    new_id[node_order] = torch.arange(len(node_order))

    def renumber(ids: torch.Tensor) -> torch.Tensor:
        return torch.where(ids >= 0, new_id[ids.clamp(min=0)], ids)

    edges = {name: getattr(rollout, name)[edge_order] for name in EDGE_FIELDS}
    edges["edge_parent"], edges["edge_child"] = renumber(edges["edge_parent"]), renumber(edges["edge_child"])
    return dataclasses.replace(
        rollout,
        node_prompt=rollout.node_prompt[node_order],
        node_depth=rollout.node_depth[node_order],
        node_parent=renumber(rollout.node_parent[node_order]),
        leaf_nodes=renumber(rollout.leaf_nodes),
        **edges,
    )


@torch.no_grad()
def sample_tree(
    policy: Policy,
    prompts: list[str],
    schedule: TreeSchedule,
    sigmas: torch.Tensor,
    *,
    guidance: float = 1.0,
    noise_level: float = 0.7,
    branch_noise_scale: float = 1.0,
    sde_type: str = "sde",
    max_batch: int = 64,
    seed: int | Sequence[int] = 0,
    decode: bool = True,
    on_step: Callable[[int], None] | None = None,
) -> TreeRollout:
    """Sample a forest of ``schedule.roots`` trees per prompt (module docstring).

    Args:
        policy: the model.
        prompts: ``P`` prompts.
        schedule: branching schedule; ``schedule.num_steps`` must be ``len(sigmas) - 1``.
        sigmas: ``[num_steps + 1]`` from 1 to 0.
        guidance: classifier-free guidance scale (1 = off).
        noise_level: SDE noise level ``a`` on stochastic steps.
        branch_noise_scale: ``a`` is multiplied by this on branching steps (BranchGRPO's
            noisier splits: the siblings differ more where their comparison is made).
        sde_type: ``"sde"`` or ``"cps"``.
        max_batch: most rows per model call.
        seed: the same seed gives the same tree (noise is drawn on the CPU, in node order);
            or ``P`` seeds, one noise stream per prompt (:func:`draw_noise`).
        decode: decode the leaves to images.
        on_step: called with each finished step's index (a stage's progress line).
    """
    if len(sigmas) != schedule.num_steps + 1:
        raise ValueError(f"{len(sigmas)} sigmas for {schedule.num_steps} steps (expected num_steps + 1)")
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if len(seeds) != 1 and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts (expected 1 or one per prompt)")
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    device = policy.device
    cond, uncond = policy.encode(prompts)
    n_roots = len(prompts) * schedule.roots
    x = draw_noise(generators, n_roots, policy.latent_shape).to(device)

    node_prompt = torch.arange(len(prompts)).repeat_interleave(schedule.roots)
    node_depth = torch.zeros(n_roots, dtype=torch.long)
    node_parent = torch.full((n_roots,), -1, dtype=torch.long)
    active = torch.arange(n_roots)
    edges: dict[str, list[torch.Tensor]] = {name: [] for name in EDGE_FIELDS}
    nfe = 0
    for step in range(schedule.num_steps):
        rows = node_prompt[active]
        sigma = sigmas[step].expand(len(active)).to(device)
        v, cost = guided_velocity(
            policy, x, sigma, cond.select(rows), uncond.select(rows), guidance, max_batch
        )
        nfe += cost
        if on_step is not None:
            on_step(step)
        factor, stochastic = schedule.factor(step), schedule.is_stochastic(step)
        level = noise_level * (branch_noise_scale if factor > 1 else 1.0) if stochastic else 0.0
        parents = active.repeat_interleave(factor)
        x_rep, v_rep = x.repeat_interleave(factor, dim=0), v.repeat_interleave(factor, dim=0)
        noise = draw_noise(generators, len(x_rep), x_rep.shape[1:]).to(device) if stochastic else None
        result = sde_step_with_logprob(
            v_rep,
            x_rep,
            sigmas[step],
            sigmas[step + 1],
            level,
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
            ("noise_level", torch.full((len(parents),), float(level))),
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
    forest = TreeRollout(
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
    return group_by_prompt(forest)


def encode_in_groups(policy: Policy, prompts: list[str], group: int) -> tuple[Conditioning, Conditioning]:
    """``policy.encode`` of ``prompts`` ``group`` at a time, concatenated: ``[P, ...]`` each."""
    parts = [policy.encode(prompts[i : i + group]) for i in range(0, len(prompts), group)]
    return Conditioning.cat([c for c, _ in parts]), Conditioning.cat([u for _, u in parts])


@dataclass
class OdeSamples:
    """Deterministic samples, one per prompt: ``images`` uint8 ``[P, H, W, 3]`` in prompt
    order, ``final_latents`` ``[P, C, H, W]`` float32 on the CPU, and ``nfe`` (transformer
    rows; a guided evaluation counts 2)."""

    images: np.ndarray
    final_latents: torch.Tensor
    nfe: int


@torch.no_grad()
def ode_samples(
    policy: Policy,
    prompts: list[str],
    steps: int,
    guidance: float,
    seed: int,
    max_batch: int = 64,
    shift: float = 3.0,
    on_step: Callable[[int], None] | None = None,
    chunk: int = 0,
) -> OdeSamples:
    """One deterministic (Euler ODE) sample per prompt, ``chunk`` prompts at a time (0: all).

    The starting noise of every prompt is drawn first, in prompt order, from one generator
    seeded by ``seed`` (as :func:`sample_tree` draws its roots), and prompts are encoded and
    denoised in the same groups (the prompts of one model call) whatever ``chunk``, so the
    images do not depend on it when it is a multiple of that group. A chunk's prompts are
    encoded, denoised and decoded on their own, and no step's latents are kept: memory is that
    of one chunk whatever the number of prompts.
    ``on_step`` is called with the step index after every step of every chunk
    (``steps * ceil(P / chunk)`` calls).
    """
    generator = torch.Generator().manual_seed(int(seed))
    noise = draw_noise([generator], len(prompts), policy.latent_shape)
    sigmas = flow_sigmas(steps, shift)
    size = chunk if chunk > 0 else max(1, len(prompts))
    # The text encoder and the denoiser see the same groups of prompts whatever the chunk (a
    # chunk is whole groups): a kernel's rounding may depend on its batch size.
    images, finals, nfe = [], [], 0
    for start in range(0, len(prompts), size):
        part = prompts[start : start + size]
        cond, uncond = encode_in_groups(policy, part, prompts_per_call(max_batch, guidance))
        x = noise[start : start + size].to(policy.device)
        for step in range(steps):
            sigma = sigmas[step].expand(len(part)).to(policy.device)
            v, cost = guided_velocity(policy, x, sigma, cond, uncond, guidance, max_batch)
            nfe += cost
            x = sde_step_with_logprob(
                v, x, sigmas[step], sigmas[step + 1], 0.0, noise=torch.zeros(())
            ).prev_sample
            if on_step is not None:
                on_step(step)
        finals.append(x.float().cpu())
        images.append(
            np.concatenate([policy.decode(x[i : i + max_batch]) for i in range(0, len(x), max_batch)])
        )
    return OdeSamples(np.concatenate(images), torch.cat(finals), nfe)
