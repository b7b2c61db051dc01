"""GPU pinning of concurrent jobs (pipeline.workflow.gpu_slots), on a machine with no GPU: the devices are
named through CUDA_VISIBLE_DEVICES and each job prints what it was given."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A job that says which devices it got and when it held them.
JOB = (
    "import os, time; start = time.time(); time.sleep({hold}); "
    "print(os.environ['CUDA_VISIBLE_DEVICES'] + '|', start, time.time())"
)


def start_job(gpus: int, hold: float, environ: dict) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "pipeline.workflow.gpu_slots",
        str(gpus),
        "--",
        sys.executable,
        "-c",
        JOB.format(hold=hold),
    ]
    return subprocess.Popen(
        command, cwd=REPO, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def finished(job: subprocess.Popen) -> tuple[set[str], float, float]:
    out, err = job.communicate(timeout=60)
    assert job.returncode == 0, err
    devices, times = out.split("|")
    start, end = times.split()
    return set(filter(None, devices.split(","))), float(start), float(end)


@pytest.fixture
def four_gpus(tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    return environ | {"CUDA_VISIBLE_DEVICES": "0,1,2,3", "MULTIGRPO_GPU_SLOTS": str(tmp_path / "slots")}


def test_two_concurrent_jobs_get_disjoint_devices(four_gpus):
    jobs = [start_job(2, 1.5, four_gpus) for _ in range(2)]
    (first, start_a, end_a), (second, start_b, end_b) = (finished(job) for job in jobs)
    assert len(first) == len(second) == 2 and not first & second
    assert first | second == {"0", "1", "2", "3"}
    assert start_b < end_a and start_a < end_b  # they did run at the same time


def test_a_job_waits_for_free_devices_and_takes_all_or_none(four_gpus):
    holder = start_job(3, 2.0, four_gpus)
    time.sleep(0.8)  # the holder has its three devices
    waiter = start_job(2, 0.1, four_gpus)  # one device is free: not enough
    held, _, held_until = finished(holder)
    got, got_at, _ = finished(waiter)
    assert len(held) == 3 and len(got) == 2
    assert got_at >= held_until - 0.05  # started only once the holder let go


def test_a_job_granted_no_gpu_sees_none(four_gpus):
    devices, _, _ = finished(start_job(0, 0, four_gpus))
    assert devices == set()


def test_asking_for_more_gpus_than_the_machine_shows_names_both(four_gpus):
    job = start_job(8, 0, four_gpus)
    _, err = job.communicate(timeout=60)
    assert job.returncode != 0 and "asks for 8 GPUs, this machine shows 4" in err


def test_under_slurm_the_scheduler_pinning_is_kept(four_gpus):
    devices, _, _ = finished(start_job(1, 0, four_gpus | {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "5"}))
    assert devices == {"5"}
