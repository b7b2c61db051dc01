"""Where a tree branches: its schedule and what its rollouts cost, in plain Python.

Kept apart from the noise schedules (:mod:`pipeline.sampling.schedule`, torch and diffusers)
because the DAG's build reads it (:mod:`pipeline.workflow.preflight`): planning a study must
not import torch (about 10 s per dry run on these machines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TreeSchedule:
    """Where a tree branches.

    Every prompt starts ``roots`` trajectories; at step ``branch_steps[j]`` every node
    spawns ``branch_factors[j]`` children from the same SDE mean with independent noise;
    on other steps every node continues on one path, by SDE (``between="sde"``, the step is
    trainable) or ODE (``between="ode"``, deterministic and not trained). ``sde_steps`` > 0
    ends the SDE region: from that step on every step is ODE (a MixGRPO-style window at the
    start, where the image's layout is decided). No branching with ``roots = G`` is plain
    GRPO group sampling.

    Attributes:
        num_steps: denoising steps.
        roots: trajectories started per prompt (K).
        branch_steps: step indices (0-based, increasing) where nodes branch.
        branch_factors: children per node at each branching step (>= 2).
        between: ``"sde"`` or ``"ode"``.
        sde_steps: steps ``0 .. sde_steps - 1`` may be SDE, later ones are ODE (0 = no limit).
    """

    num_steps: int
    roots: int
    branch_steps: tuple[int, ...] = ()
    branch_factors: tuple[int, ...] = ()
    between: str = "sde"
    sde_steps: int = 0

    def __post_init__(self):
        if self.num_steps < 1 or self.roots < 1:
            raise ValueError(f"tree: num_steps ({self.num_steps}) and roots ({self.roots}) must be >= 1")
        if len(self.branch_steps) != len(self.branch_factors):
            raise ValueError(
                f"tree: {len(self.branch_steps)} branch_steps but {len(self.branch_factors)} branch_factors"
            )
        if list(self.branch_steps) != sorted(set(self.branch_steps)):
            raise ValueError(f"tree: branch_steps {list(self.branch_steps)} must be increasing and unique")
        if any(not 0 <= s < self.num_steps for s in self.branch_steps):
            raise ValueError(
                f"tree: branch_steps {list(self.branch_steps)} must lie in 0..{self.num_steps - 1}"
            )
        if any(f < 2 for f in self.branch_factors):
            raise ValueError(f"tree: branch_factors {list(self.branch_factors)} must be >= 2")
        if self.between not in ("sde", "ode"):
            raise ValueError(f"tree: between {self.between!r} must be 'sde' or 'ode'")
        if not 0 <= self.sde_steps <= self.num_steps:
            raise ValueError(f"tree: sde_steps ({self.sde_steps}) must lie in 0..{self.num_steps}")
        if self.sde_steps and any(s >= self.sde_steps for s in self.branch_steps):
            raise ValueError(
                f"tree: branch_steps {list(self.branch_steps)} must lie inside the SDE window "
                f"(steps below sde_steps = {self.sde_steps})"
            )

    def factor(self, step: int) -> int:
        """Children per node at ``step`` (1 when the step does not branch)."""
        return dict(zip(self.branch_steps, self.branch_factors, strict=True)).get(step, 1)

    def is_stochastic(self, step: int) -> bool:
        in_window = self.sde_steps == 0 or step < self.sde_steps
        return self.factor(step) > 1 or (self.between == "sde" and in_window)

    @property
    def leaves_per_prompt(self) -> int:
        return self.roots * math.prod(self.branch_factors)

    def nodes_per_depth(self) -> list[int]:
        """Nodes per prompt at every depth 0..num_steps (depth d = state after d steps)."""
        counts = [self.roots]
        for step in range(self.num_steps):
            counts.append(counts[-1] * self.factor(step))
        return counts

    def nfe_per_prompt(self, guidance_rows: int = 1) -> int:
        """Transformer rows per prompt: one evaluation per node per step (x2 with CFG)."""
        return guidance_rows * sum(self.nodes_per_depth()[:-1])


def equal_nfe_prompts(prompts: int, schedule: TreeSchedule, multiple: int = 1) -> int:
    """Prompts per iteration at which ``schedule``'s rollouts cost the NFE of ``prompts``
    independent groups with as many leaves (``leaves * num_steps`` evaluations per prompt): a
    tree spends what its shared prefixes save on more prompts. Rounded to the nearest multiple
    of ``multiple`` (every rank samples an equal share), at least ``multiple``."""
    flat = schedule.leaves_per_prompt * schedule.num_steps
    share = prompts * flat / schedule.nfe_per_prompt() / multiple
    return max(1, round(share)) * multiple
