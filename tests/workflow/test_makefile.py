"""The Makefile's commands work from a folder whose path holds a space: every path it builds
from the working folder is quoted (``make study`` failed with ``/bin/sh: 1: /path/dir: not
found``)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.workflow


@pytest.mark.parametrize(
    ("target", "tool"),
    [("dry-run", "snakemake"), ("ui-stop", "python"), ("unlock", "python"), ("lint", "ruff")],
)
def test_make_targets_run_from_a_path_with_a_space(tmp_path, target, tool):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    folder = tmp_path / "my project"
    (folder / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(REPO / "Makefile", folder / "Makefile")
    shutil.copy2(REPO / "pyproject.toml", folder / "pyproject.toml")
    # The venv's tools as stubs that say they ran; the stamp says the venv is set up.
    for name in ("snakemake", "python", "pip", "pytest", "ruff", "snakefmt"):
        stub = folder / ".venv" / "bin" / name
        stub.write_text(f'#!/bin/sh\necho "{name} ran: $*"\n')
        stub.chmod(0o755)
    (folder / ".venv" / ".installed").touch()
    result = subprocess.run(["make", target], cwd=folder, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{tool} ran:" in result.stdout
