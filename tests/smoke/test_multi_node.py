"""Training across nodes, on this machine's CPU: two torchrun agents play two nodes (gloo, a c10d
rendezvous on 127.0.0.1, one rank each), as ``srun`` starts them on a cluster, one copy of the
train stage per node.

They train a tiny run to the same weights, bit for bit, as one agent with two ranks; and when
one agent's worker is killed mid-run (SIGKILL), both agents restart their workers
(``train.max_restarts``), which resume from the run's last checkpoint and end with the same
weights as a run that was never interrupted.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.smoke.test_distributed import _args, write_split
from tests.smoke.tiny import tiny_mini_dir, train_jsons

ITERATIONS = 6
TIMEOUT_S = 600


def _jsons(max_restarts: int = 0, **layout) -> tuple[str, str]:
    """A tiny run of 2 ranks: 2 prompts an iteration (one per rank), a checkpoint after each."""
    config_json, runtime_json = train_jsons(iterations=ITERATIONS, probe_prompts=0, **layout)
    return config_json, json.dumps(json.loads(runtime_json) | {"max_restarts": max_restarts})


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("multi_node")
    split = write_split(folder / "train.parquet")
    return {"base": tiny_mini_dir(folder / "mini"), "split": split, "folder": folder}


def _command(inputs: dict[str, Path], out: Path, jsons: tuple[str, str], *layout: str) -> list[str]:
    train = _args(inputs["base"], inputs["split"], out, jsons)
    return [sys.executable, "-m", "pipeline.stages.train", *train, *layout]


def _environment() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_nodes(inputs: dict[str, Path], out: Path, jsons: tuple[str, str]) -> list[subprocess.Popen]:
    """Two copies of the stage, each one agent of one rank, meeting at a rendezvous on
    127.0.0.1: what srun starts on two nodes of one rank each."""
    endpoint = f"127.0.0.1:{_free_port()}"
    layout = ("--nproc", "1", "--nnodes", "2", "--rdzv-endpoint", endpoint, "--rdzv-id", out.name)
    agents = []
    for node in range(2):
        log = (out.parent / f"{out.name}.node{node}.log").open("w")
        agents.append(
            subprocess.Popen(
                _command(inputs, out, jsons, *layout),
                cwd=REPO,
                env=_environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    return agents


def _wait(agents: list[subprocess.Popen], out: Path) -> str:
    """Both agents' exit codes checked; their logs, concatenated."""
    try:
        codes = [agent.wait(timeout=TIMEOUT_S) for agent in agents]
    finally:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
    logs = "".join((out.parent / f"{out.name}.node{n}.log").read_text() for n in range(2))
    assert codes == [0, 0], logs[-4000:]
    return logs


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "weights.safetensors")


def _assert_bitwise_equal(found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert found.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(found[name], expected[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


@pytest.fixture(scope="module")
def one_agent_two_ranks(inputs) -> dict[str, torch.Tensor]:
    """The reference: one agent (one node) running both ranks."""
    out = inputs["folder"] / "one_agent"
    jsons = _jsons(gpus=2)
    result = subprocess.run(
        _command(inputs, out, jsons, "--nproc", "2"),
        cwd=REPO,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return _weights(out)


def test_two_agents_playing_two_nodes_train_the_weights_of_one_agent_with_two_ranks(
    inputs, one_agent_two_ranks
):
    out = inputs["folder"] / "two_nodes"
    _wait(_start_nodes(inputs, out, _jsons(gpus=1, nodes=2)), out)
    trained = _weights(out)
    initial = load_file(inputs["base"] / "model.safetensors")
    moved = [name for name in trained if name in initial and not torch.equal(trained[name], initial[name])]
    assert moved, "training changed no weight: the comparison would be empty"
    _assert_bitwise_equal(trained, one_agent_two_ranks)
    assert len(pd.read_parquet(out / "metrics.parquet")) == ITERATIONS


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (an agent's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the process ended while the folder was read
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _checkpointed_iterations(out: Path) -> int:
    try:
        return json.loads((out / "checkpoint" / "state.json").read_text())["iteration"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_worker_killed_mid_run_restarts_with_the_others_and_resumes_to_the_same_weights(
    inputs, one_agent_two_ranks
):
    out = inputs["folder"] / "killed"
    agents = _start_nodes(inputs, out, _jsons(max_restarts=1, gpus=1, nodes=2))
    deadline = time.monotonic() + TIMEOUT_S
    while _checkpointed_iterations(out) < 1:
        assert all(agent.poll() is None for agent in agents), "an agent ended before the first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint within the time limit"
        time.sleep(0.05)
    workers = _children(agents[1].pid)
    assert len(workers) == 1, f"the second agent runs {workers}, not one worker"
    os.kill(workers[0], signal.SIGKILL)
    killed_at = _checkpointed_iterations(out)
    assert killed_at < ITERATIONS, "the run ended before the kill: nothing to resume"
    logs = _wait(agents, out)
    resumed = [int(line.split()[-1]) for line in logs.splitlines() if line.startswith("resuming at")]
    assert resumed and killed_at <= resumed[0] < ITERATIONS, logs[-4000:]
    _assert_bitwise_equal(_weights(out), one_agent_two_ranks)
    metrics = pd.read_parquet(out / "metrics.parquet")
    assert list(metrics.iteration) == list(range(ITERATIONS))
