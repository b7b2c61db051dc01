"""How a training job starts its processes (pipeline.rl.launch): torchrun's command line on one
node and on several, SLURM's host lists, and the rendezvous every node's copy derives alike."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from pipeline.rl.launch import PORT_BASE, PORT_SPAN, Layout, expand_hostlist, rendezvous


@pytest.mark.parametrize(
    ("hostlist", "hosts"),
    [
        ("node7", ["node7"]),
        ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
        ("gpu[01-02,07],login1", ["gpu01", "gpu02", "gpu07", "login1"]),
        ("a[8-10]", ["a8", "a9", "a10"]),  # no padding in the start: none in the names
        ("a[098-100]", ["a098", "a099", "a100"]),
        ("r[1-2]-n[1,3]", ["r1-n1", "r1-n3", "r2-n1", "r2-n3"]),  # as scontrol show hostnames orders them
        ("x1, x2", ["x1", "x2"]),
    ],
)
def test_slurm_host_lists_expand_in_order(hostlist, hosts):
    assert expand_hostlist(hostlist) == hosts


@pytest.mark.parametrize(
    ("hostlist", "reason"),
    [
        ("gpu[01-03", "unbalanced"),
        ("gpu01]", "unbalanced"),
        ("gpu[a-c]", "not a number"),
        ("g[5-3]", "backwards"),
    ],
)
def test_a_malformed_host_list_is_named(hostlist, reason):
    with pytest.raises(ValueError, match=reason):
        expand_hostlist(hostlist)


SLURM_TASK = {"SLURM_STEP_NODELIST": "gpu[07-10]", "SLURM_STEP_NUM_NODES": "4", "SLURM_JOB_ID": "123456"}


def test_every_node_derives_the_same_rendezvous_on_the_first_node():
    endpoint, run_id = rendezvous(4, None, SLURM_TASK)
    assert endpoint == f"gpu07:{PORT_BASE + 123456 % PORT_SPAN}" == "gpu07:13456"
    assert run_id == "123456"
    assert rendezvous(4, 29400, SLURM_TASK) == ("gpu07:29400", "123456")  # train.rendezvous_port
    # The job's node list serves where the step's is not set (an older srun).
    job_only = {"SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_JOB_ID": "123456"}
    assert rendezvous(4, None, job_only) == (endpoint, run_id)


def test_a_step_on_fewer_nodes_than_the_job_needs_is_refused():
    with pytest.raises(
        ValueError, match=r"srun started this step on 4 node\(s\) \(gpu\[07-10\]\); .* each of 8"
    ):
        rendezvous(8, None, SLURM_TASK)


def test_several_nodes_outside_slurm_say_how_to_run_them():
    with pytest.raises(ValueError, match="train.nodes 2: a multi-node training job runs under SLURM"):
        rendezvous(2, None, {})


def test_torchrun_command_lines():
    assert Layout(8).torchrun_args("m") == [
        "--standalone",
        "--nproc-per-node=8",
        "--max-restarts=0",
        "-m",
        "m",
    ]
    nodes = Layout(8, 4, max_restarts=2, endpoint="gpu07:13456", run_id="123456")
    assert nodes.world_size == 32
    assert nodes.torchrun_args("m") == [
        "--nnodes=4",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu07:13456",
        "--rdzv-id=123456",
        "--nproc-per-node=8",
        "--max-restarts=2",
        "-m",
        "m",
    ]
    with pytest.raises(ValueError, match="4 nodes need a rendezvous endpoint"):
        Layout(8, 4).torchrun_args("m")


def test_only_one_process_that_may_not_restart_runs_without_torchrun():
    assert not Layout(1).needs_agent()
    assert Layout(1, max_restarts=1).needs_agent()
    assert Layout(2).needs_agent() and Layout(1, 2).needs_agent()


def test_the_torchrun_command_lines_parse_as_torchrun_reads_them():
    from torch.distributed import run as torchrun

    config = torchrun.parse_args(Layout(2, 3, 1, "h:1234", "j").torchrun_args("pipeline.stages.train"))
    assert (config.nnodes, config.nproc_per_node, config.max_restarts) == ("3", "2", 1)
    assert (config.rdzv_backend, config.rdzv_endpoint, config.rdzv_id) == ("c10d", "h:1234", "j")
    assert config.module and config.training_script == "pipeline.stages.train"


def test_the_stage_refuses_a_layout_it_cannot_start_before_any_work(monkeypatch):
    from pipeline.stages.train import process_layout

    for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    two_nodes = argparse.Namespace(nproc=2, nnodes=2, rdzv_endpoint=None, rdzv_id=None)
    with pytest.raises(SystemExit, match="train.nodes 2: a multi-node training job runs under SLURM"):
        process_layout(two_nodes, {}, 8)
    with pytest.raises(
        SystemExit, match="prompts_per_iteration 6 is not divisible by the 4 training processes"
    ):
        process_layout(two_nodes, {}, 6)
    given = argparse.Namespace(nproc=2, nnodes=2, rdzv_endpoint="10.0.0.1:2950", rdzv_id=None)
    assert process_layout(given, {"max_restarts": 3}, 8) == Layout(2, 2, 3, "10.0.0.1:2950", "multigrpo")
    for name, value in SLURM_TASK.items():
        monkeypatch.setenv(name, value.replace("4", "2").replace("10]", "08]"))
    assert process_layout(two_nodes, {"rendezvous_port": 2999}, 8).endpoint == "gpu07:2999"


def test_one_node_runs_keep_their_rerun_trigger_and_the_ranks_not_the_nodes_set_the_prompts():
    """``nodes`` joins a run's weight-deciding params only above 1 (one-node runs trained before
    the key existed plan nothing); the prompts an iteration samples follow the ranks alone."""
    from pipeline.config.load import load
    from pipeline.rl.settings import iteration_prompt_count, method_spec, run_config
    from pipeline.workflow import stage_params
    from tests.unit.test_config import default_raw

    cfg = load(default_raw())
    params = stage_params.train_params(cfg, "multi_grpo", 0)
    assert not {"nodes", "max_restarts", "rendezvous_port"} & params["train"].keys()
    assert run_config(params, stage_params.train_runtime(cfg)).nodes == 1
    spread = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, nodes=2))
    assert stage_params.train_params(spread, "multi_grpo", 0)["train"]["nodes"] == 2

    method = method_spec(cfg.methods["multi_grpo"], cfg.sampling.train_steps, cfg.train.sde_steps)
    counts = {
        (gpus, nodes): iteration_prompt_count(dataclasses.replace(cfg.train, gpus=gpus, nodes=nodes), method)
        for gpus, nodes in ((2, 1), (1, 2), (4, 2), (8, 1))
    }
    assert counts[(2, 1)] == counts[(1, 2)] and counts[(4, 2)] == counts[(8, 1)]
    assert counts[(8, 1)] % 8 == 0 and cfg.train.equal_sampling_nfe
