"""``make ui`` refuses to start what it could not stop: a second UI of one database, a taken
port, a record it cannot write (each checked before a server starts)."""

from __future__ import annotations

import signal
import socket
from subprocess import Popen

import pytest

from pipeline.runtime import mlflow_ui
from pipeline.stages import mlflow_init


@pytest.fixture
def database(tmp_path):
    db = tmp_path / "mlflow.db"
    argv = ["--tracking-uri", f"sqlite:///{db}", "--experiment", "ui", "--artifact-root", str(tmp_path)]
    assert mlflow_init.main([*argv, "--out", str(tmp_path / "e.json")]) == 0
    return db


@pytest.fixture
def no_server(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("a server was started")

    monkeypatch.setattr(mlflow_ui.subprocess, "Popen", refuse)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_second_ui_of_a_database_leaves_the_first_and_its_record(database, no_server):
    first = Popen(["sleep", "60"], start_new_session=True)  # stands in for a running UI
    record = mlflow_ui.pgid_file(database)
    record.write_text(f"{first.pid}\n")
    try:
        with pytest.raises(
            SystemExit, match=rf"already runs \(process group {first.pid}, recorded in {record}\)"
        ):
            mlflow_ui.main(["--db", str(database), "--port", str(_free_port())])
        assert record.read_text() == f"{first.pid}\n"  # make ui-stop still finds the first
        assert mlflow_ui.main(["--db", str(database), "--stop"]) == 0
        assert first.wait(timeout=30) == -signal.SIGTERM
    finally:
        first.kill()


def test_a_taken_port_is_named_before_anything_starts(database, no_server, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=rf"port {port} on 127.0.0.1 is in use .*UI_PORT="):
            mlflow_ui.main(["--db", str(database), "--port", str(port)])
    assert "http://" not in capsys.readouterr().out  # no address of somebody else's server
    assert not mlflow_ui.pgid_file(database).exists()


def test_a_record_that_cannot_be_written_starts_no_server(database, no_server):
    """In a read-only results folder the server started, then the record failed: an orphan.
    (As root a chmod does not stop writes, so the record's path is a folder here.)"""
    mlflow_ui.pgid_file(database).mkdir()
    with pytest.raises(SystemExit, match=r"cannot write the UI's process record .*nothing was started"):
        mlflow_ui.main(["--db", str(database), "--port", str(_free_port())])
