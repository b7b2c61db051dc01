"""After a Snakemake run killed with SIGKILL, ``make unlock`` removes its stale lock, and
refuses while a Snakemake still runs in the folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline.workflow import unlock
from tests.workflow.study import copy_workflow, snakemake

pytestmark = pytest.mark.workflow


def test_a_killed_runs_lock_is_removed_and_a_live_runs_lock_is_not(tmp_path, monkeypatch):
    folder = copy_workflow(tmp_path)
    env = dict(os.environ, PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "snakemake", "-c1", "--configfile", "config_tiny.yaml"]
    run = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    locks = folder / ".snakemake" / "locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert any(locks.iterdir()), "no lock was taken"
    locked = snakemake(folder, "-c1", "--configfile", "config_tiny.yaml", check=False)
    assert "cannot be locked" in locked.stdout + locked.stderr

    # A Snakemake still running here: its lock is left alone.
    fake = tmp_path / "bin" / "snakemake"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(60)\n")
    fake.chmod(0o755)
    alive = subprocess.Popen([str(fake)], cwd=folder)
    monkeypatch.chdir(folder)
    try:
        time.sleep(0.5)  # exec'd
        with pytest.raises(SystemExit, match=rf"Snakemake is running in {folder} \(process {alive.pid}\)"):
            unlock.main(["--configfile", "config_tiny.yaml"])
        assert any(locks.iterdir())
    finally:
        alive.kill()
        alive.wait()

    monkeypatch.setenv("PATH", env["PATH"])
    assert unlock.main(["--configfile", "config_tiny.yaml"]) == 0
    assert not locks.exists() or not any(locks.iterdir())
    assert snakemake(folder, "-c1", "--configfile", "config_tiny.yaml", "-n").returncode == 0
