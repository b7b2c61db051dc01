"""The exact ``sbatch`` submission Snakemake's SLURM executor plugin makes for one train job of the
paper config under profiles/slurm, on one node and on four. No cluster: stand-ins for the SLURM
commands come first on PATH, and the stand-in sbatch records its arguments."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.workflow.study import copy_workflow
from tests.workflow.test_paper_configs import provide_local_files

pytestmark = pytest.mark.workflow

CONFIG = "configs/paper_ocr_color.yaml"
PAPER = yaml.safe_load((REPO / CONFIG).read_text())
METHOD = PAPER["run_methods"][0]
TARGET = f"results/{PAPER['study']}/train/{METHOD}/seed0/weights.safetensors"
JOB_ID = "4242"

# Every other SLURM command the plugin runs: account validation (sacctmgr, sshare), cluster settings
# (scontrol show config), SLURM's presence and the default partition (sinfo), the job's status
# (sacct, squeue: FAILED, so Snakemake stops at its first check) and scancel.
STAND_INS = {
    "sacctmgr": "echo proj",
    "sshare": "echo proj",
    "scontrol": 'echo "MaxArraySize = 1001"',
    "sinfo": 'echo PARTITION; echo "gpu*"',
    "sacct": f'case "$*" in *--name*) echo "{JOB_ID}|FAILED";; *) echo stand-in;; esac',
    "squeue": f'echo "{JOB_ID}|FAILED"',
    "scancel": "true",
}
SBATCH = """#!{python}
import json, sys
call = {{"argv": sys.argv[1:], "stdin": sys.stdin.read()}}
with open({record!r}, "a") as out:
    out.write(json.dumps(call) + "\\n")
print({job_id!r})
"""

# What the submission asks for (profiles/slurm's train resources: 48 h + margin, 256 GB, 16 CPUs).
COMMON = {"-p": "gpu", "-A": "proj", "-t": "2940", "--mem": "256000", "--cpus-per-task": "16"}
EXPECTED = {
    # One allocation of 4 nodes, 8 GPUs each (--gres is per node), one task per node (the rule's srun
    # starts a torchrun agent on each); no task per GPU.
    4: (
        {**COMMON, "--nodes": "4", "--ntasks": "4", "--gres": "gpu:8"},
        ("--gpus", "--ntasks-per-gpu", "--ntasks-per-node"),
    ),
    # One node: the job's 8 GPUs (--gpus), no node or task geometry.
    1: ({**COMMON, "--gpus": "8"}, ("--nodes", "--gres", "--ntasks", "--ntasks-per-gpu")),
}


def options(argv: list[str]) -> dict[str, str | bool]:
    """``sbatch``'s options: ``--a=b`` and ``-a b`` as ``{"--a": "b", "-a": "b"}``, flags as True."""
    found: dict[str, str | bool] = {}
    args = iter(range(len(argv)))
    for i in args:
        arg = argv[i]
        assert arg.startswith("-"), f"positional argument {arg!r} in {argv}"
        if "=" in arg:
            key, value = arg.split("=", 1)
            found[key] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            found[arg] = argv[i + 1]
            next(args)
        else:
            found[arg] = True
    return found


def slurm_stand_ins(folder: Path, record: Path) -> Path:
    folder.mkdir()
    for name, body in STAND_INS.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / "sbatch").write_text(SBATCH.format(python=sys.executable, record=str(record), job_id=JOB_ID))
    for path in folder.iterdir():
        path.chmod(0o755)
    return folder


def submit_train_job(tmp_path: Path, nodes: int) -> tuple[list[dict], str, list[str]]:
    """Run Snakemake under the SLURM profile on one train job of the paper config (its inputs made
    by other rules are stand-ins, and only train may run): the sbatch calls, Snakemake's output and
    the config files it was given."""
    folder = copy_workflow(tmp_path / "study")
    provide_local_files(folder, "paper_ocr_color")
    for made in (
        f"datasets/{PAPER['dataset']['name']}/train.parquet",
        f"results/{PAPER['study']}/mlflow_experiment.json",
    ):
        (folder / made).parent.mkdir(parents=True, exist_ok=True)
        (folder / made).write_text("stand-in\n")
    # The site's partition and account in place of the profile's placeholders.
    profile = folder / "profiles" / "slurm" / "config.yaml"
    settings = yaml.safe_load(profile.read_text())
    settings["default-resources"].update(slurm_partition="gpu", slurm_account="proj")
    profile.write_text(yaml.safe_dump(settings))
    configs = [CONFIG]
    if nodes != PAPER["train"].get("nodes", 1):  # the paper config on another number of nodes
        # 64 prompts per iteration: a multiple of the ranks of 4 nodes x 8 GPUs and of 1 x 8.
        overlay = {"train": {"nodes": nodes, "prompts_per_iteration": 64}}
        (folder / "nodes.yaml").write_text(yaml.safe_dump(overlay))
        configs.append("nodes.yaml")
    record = tmp_path / "sbatch.jsonl"
    bin_dir = slurm_stand_ins(tmp_path / "bin", record)
    path = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "PYTHONPATH" and not key.startswith("SLURM_")
    }
    args = [
        *(sys.executable, "-m", "snakemake", TARGET, "--workflow-profile", "profiles/slurm"),
        *("--configfile", *configs, "--allowed-rules", "train"),
        # One submission (not the profile's retry), and the first status check after a second.
        *("--retries", "0", "--slurm-init-seconds-before-status-checks", "1"),
    ]
    try:
        result = subprocess.run(
            args, cwd=folder, env=dict(env, PATH=path), capture_output=True, text=True, timeout=150
        )
        out = result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:  # never hang: the record is what counts
        out = f"{error.stdout or ''}{error.stderr or ''}\n(Snakemake stopped after {error.timeout} s)"
    assert record.is_file(), f"Snakemake made no sbatch call:\n{out[-5000:]}"
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    return calls, out, [str(folder / config) for config in configs]


@pytest.mark.parametrize("nodes", [4, 1])
def test_a_paper_train_job_is_one_sbatch_submission_of_its_nodes(tmp_path, nodes):
    calls, out, configs = submit_train_job(tmp_path, nodes)
    assert len(calls) == 1, calls
    argv = calls[0]["argv"]
    print(f"\nsbatch submission of the {nodes}-node train job:\nsbatch {shlex.join(argv)}")
    if calls[0]["stdin"]:
        print(f"with the script on stdin:\n{calls[0]['stdin']}")
    assert f"has been submitted with SLURM jobid {JOB_ID}" in out, out[-5000:]

    opts = options(argv)
    wanted, absent = EXPECTED[nodes]
    assert {key: opts.get(key) for key in wanted} == wanted
    assert [key for key in absent if key in opts] == []
    requeue = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text()).get("slurm-requeue")
    assert ("--requeue" in opts) == bool(requeue)

    # The job runs Snakemake's job step for this one train job, with the study's config files.
    job = shlex.split(opts["--wrap"] if "--wrap" in opts else calls[0]["stdin"].splitlines()[-1])
    step = {flag: job[job.index(flag) + 1] for flag in ("--target-jobs", "--executor", "--allowed-rules")}
    assert job[1:3] == ["-m", "snakemake"]
    assert step == {
        "--target-jobs": f"train:method={METHOD},seed=0",
        "--executor": "slurm-jobstep",
        "--allowed-rules": "train",
    }
    given = job[job.index("--configfiles") + 1 :]
    assert given[: next(i for i, arg in enumerate(given) if arg.startswith("-"))] == configs
    # The rule's own command spreads the ranks (the job step runs an mpi job's command as it is).
    shell = re.search(r"Shell command: ([^\n]*)", out)
    assert shell, out[-5000:]
    shell = shell.group(1)
    if nodes > 1:
        assert "srun --nodes=4 --ntasks=4 --ntasks-per-node=1 --gres=gpu:8 " in shell
        assert "--nproc 8 --nnodes 4 " in shell
    else:
        assert "srun " not in shell and "gpu_slots 8 -- python -u -m pipeline.stages.train " in shell
        assert "--nproc 8 " in shell and "--nnodes" not in shell
