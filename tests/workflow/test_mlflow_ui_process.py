"""``make ui``'s server stops with it: no orphaned ``mlflow`` processes keep the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.stages import mlflow_init
from tests.conftest import REPO

pytestmark = pytest.mark.workflow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving(port: int) -> bool:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


@pytest.fixture
def database(tmp_path) -> Path:
    db = tmp_path / "mlflow.db"
    argv = ["--tracking-uri", f"sqlite:///{db}", "--experiment", "ui", "--artifact-root", str(tmp_path)]
    assert mlflow_init.main([*argv, "--out", str(tmp_path / "e.json")]) == 0
    return db


def _start(database: Path, port: int, via_shell: bool) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline.runtime.mlflow_ui", "--db", str(database), "--port", str(port)]
    if via_shell:  # as make runs it: the wrapper is a child of the killed process
        command = ["bash", "-c", " ".join(command) + " & wait"]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    assert _wait(lambda: _serving(port), 90), "the MLflow UI did not come up in 90 s"
    return process


def test_killing_the_parent_with_sigkill_stops_the_server(database):
    port = _free_port()
    parent = _start(database, port, via_shell=True)
    pgid = int((database.parent / "mlflow_ui.pgid").read_text())
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait(lambda: not _group_alive(pgid), 30), "orphaned mlflow processes still run"
        assert not _serving(port)
    finally:
        for group in (pgid, parent.pid):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_ui_stop_ends_a_server_whose_wrapper_was_killed(database):
    port = _free_port()
    wrapper = _start(database, port, via_shell=False)
    pgid = int((database.parent / "mlflow_ui.pgid").read_text())
    try:
        wrapper.send_signal(signal.SIGKILL)  # nothing can clean up after this
        wrapper.wait()
        assert _group_alive(pgid) and _wait(lambda: _serving(port), 30)  # a loaded machine answers late
        command = [sys.executable, "-m", "pipeline.runtime.mlflow_ui", "--db", str(database), "--stop"]
        stopped = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert f"stopped MLflow UI process group {pgid}" in stopped.stdout
        assert not _group_alive(pgid) and not _serving(port)
    finally:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
