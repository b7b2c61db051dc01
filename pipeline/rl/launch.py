"""How a training job starts its processes: torchrun's agent, on one node or on each of several.

One node (``train.nodes`` 1): ``torchrun --standalone``, which rendezvous on a free local port,
so several jobs can share a machine. Several nodes: the job's ``srun`` starts this stage once
per node (``rules/train.smk``), and each copy runs one torchrun agent; the agents meet at a c10d
rendezvous on the job's first node (:func:`rendezvous`), which also numbers the ranks. Either
way ``train.max_restarts`` is torchrun's: when a worker dies, every agent stops its workers and
starts them again, and they resume from the run's last checkpoint.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

# Ports for a rendezvous whose port is not configured: below Linux's ephemeral range
# (32768 and up), so that no client socket holds one by chance.
PORT_BASE, PORT_SPAN = 10000, 20000
# torch's switch that keeps workers off the agents' rendezvous store (see :func:`launch`).
SHARED_STORE_SWITCH = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


@dataclass(frozen=True)
class Layout:
    """A training job's processes: ``nproc_per_node`` on each of ``nnodes`` nodes; with several
    nodes, the rendezvous ``endpoint`` (``host:port``) and ``run_id`` that every agent shares."""

    nproc_per_node: int
    nnodes: int = 1
    max_restarts: int = 0
    endpoint: str | None = None
    run_id: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    def needs_agent(self) -> bool:
        """One process that may not restart runs in process, without torchrun."""
        return self.world_size > 1 or self.max_restarts > 0

    def torchrun_args(self, module: str) -> list[str]:
        """torchrun's command line (without the module's own arguments)."""
        common = [f"--nproc-per-node={self.nproc_per_node}", f"--max-restarts={self.max_restarts}"]
        if self.nnodes == 1:
            return ["--standalone", *common, "-m", module]
        if not self.endpoint or not self.run_id:
            raise ValueError(f"{self.nnodes} nodes need a rendezvous endpoint and id (got {self})")
        rendezvous = [
            f"--nnodes={self.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={self.endpoint}",
            f"--rdzv-id={self.run_id}",
        ]
        return [*rendezvous, *common, "-m", module]


def expand_hostlist(hostlist: str) -> list[str]:
    """The hosts of a SLURM host list, in order: ``"gpu[01-02,07],login1"`` gives
    ``["gpu01", "gpu02", "gpu07", "login1"]`` (a range keeps its start's zero padding; several
    bracketed parts in one name expand to every combination, as ``scontrol show hostnames``)."""
    hosts = []
    for name in _split_top_level(hostlist):
        hosts.extend(_expand_name(name))
    return hosts


def _split_top_level(hostlist: str) -> list[str]:
    """``hostlist`` split at the commas outside brackets."""
    names, depth, start = [], 0, 0
    for position, char in enumerate(hostlist):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            names.append(hostlist[start:position])
            start = position + 1
        if depth not in (0, 1):
            raise ValueError(f"host list {hostlist!r}: unbalanced brackets")
    if depth:
        raise ValueError(f"host list {hostlist!r}: unbalanced brackets")
    names.append(hostlist[start:])
    return [name.strip() for name in names if name.strip()]


def _expand_name(name: str) -> list[str]:
    match = re.match(r"^([^\[]*)\[([^\]]*)\](.*)$", name)
    if not match:
        return [name]
    prefix, ranges, rest = match.groups()
    hosts = []
    for part in ranges.split(","):
        bounds = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not bounds:
            raise ValueError(f"host list entry {name!r}: {part!r} is not a number or a range")
        first, last = bounds.group(1), bounds.group(2) or bounds.group(1)
        if int(last) < int(first):
            raise ValueError(f"host list entry {name!r}: range {part!r} runs backwards")
        hosts.extend(
            host
            for number in range(int(first), int(last) + 1)
            for host in _expand_name(f"{prefix}{number:0{len(first)}d}{rest}")
        )
    return hosts


def rendezvous(nnodes: int, port: int | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """``(host:port, id)`` of a SLURM job's c10d rendezvous, the same on every node: its first
    node, ``port`` or one derived from the job id, and the job id.

    Read from the environment ``srun`` gives each of the job's tasks (``SLURM_STEP_NODELIST``,
    ``SLURM_STEP_NUM_NODES``, ``SLURM_JOB_ID``); a step on fewer nodes than ``nnodes`` is refused,
    as its agents would wait for the missing ones until the rendezvous times out.
    """
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST")
    job_id = environ.get("SLURM_JOB_ID")
    if not nodelist or not job_id:
        raise ValueError(
            f"train.nodes {nnodes}: a multi-node training job runs under SLURM, one task per node "
            "(srun sets SLURM_STEP_NODELIST and SLURM_JOB_ID; neither is set here); run it with "
            "--workflow-profile profiles/slurm, or pass --rdzv-endpoint HOST:PORT to every node's copy"
        )
    hosts = expand_hostlist(nodelist)
    started = int(environ.get("SLURM_STEP_NUM_NODES") or len(hosts))
    if started != nnodes:
        raise ValueError(
            f"train.nodes {nnodes}: srun started this step on {started} node(s) ({nodelist}); "
            f"the job needs one task on each of {nnodes} nodes"
        )
    if port is None:
        port = PORT_BASE + int(job_id) % PORT_SPAN
    return f"{hosts[0]}:{port}", job_id


def launch(layout: Layout, module: str, argv: list[str]) -> int:
    """Run ``python -m module argv`` in ``layout``'s processes on this node, as torchrun's
    command line would; 0, or 1 if the processes failed (after ``layout.max_restarts`` restarts).

    The module's arguments are set after torchrun's parsing: its command line would take an
    abbreviation of its own options among them (``--nproc`` for ``--nproc-per-node``).
    """
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # A fresh store for every round of workers, hosted by their rank 0. The agents' rendezvous
    # store, which workers share by default, outlives a restart with the dead workers' gloo
    # addresses in it: restarted workers read them and wait on dead peers (seen here: 2 agents,
    # one worker SIGKILLed, the restarted ranks hung in gloo's connect).
    os.environ[SHARED_STORE_SWITCH] = "1"
    config = torchrun.parse_args(layout.torchrun_args(module))
    config.training_script_args = list(argv)
    try:
        torchrun.run(config)
    except ChildFailedError as error:
        print(error.format_msg(), file=sys.stderr)
        return 1
    return 0
