"""Every shell command that README.md and docs/*.md show in a ``bash`` block works as written:
it parses, its Make target exists, and what it asks Snakemake to do plans in a dry run (run
with ``-n``); Python commands run (with ``--help`` where they would do real work)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA
from tests.workflow.study import copy_workflow, snakemake
from tests.workflow.test_paper_configs import provide_local_files

pytestmark = pytest.mark.workflow

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Make targets whose recipe is `snakemake $(ARGS)` (plus flags): their ARGS are dry-run too.
SNAKEMAKE_TARGETS = {"study": [], "dry-run": []}


def shell_commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every command line in a ``bash`` block (comments dropped)."""
    found = []
    for document in DOCUMENTS:
        for block in re.findall(r"```bash\n(.*?)```", document.read_text(encoding="utf-8"), re.S):
            for line in block.splitlines():
                command = _strip_comment(line).strip()
                if command:
                    found.append((document.name, command))
    return found


def _strip_comment(line: str) -> str:
    """The line without a trailing ``# ...`` comment (outside quotes)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.commenters = "#"
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:
        return line
    return shlex.join(words) if words else ""


COMMANDS = shell_commands()


def test_the_documents_show_commands():
    assert len(COMMANDS) >= 8
    assert ("README.md", "make study") in COMMANDS


def workflow_copy(tmp_path: Path, command: str) -> Path:
    """A copy of the workflow with what the command's config reads: stand-ins for a paper
    config's local models and data, the workplace's reference data for one that reads
    ``../shared/data`` (skipped with the reason where it is absent)."""
    folder = copy_workflow(tmp_path / "work")
    paper = re.search(r"configs/(paper_\w+)\.yaml", command)
    if paper:
        provide_local_files(folder, paper.group(1))
    if "configs/flow_grpo_ocr_test.yaml" in command:
        if not SHARED_DATA.is_dir():
            pytest.skip(f"reference data not found at {SHARED_DATA} (the workplace's shared/ folder)")
        shutil.copytree(SHARED_DATA, tmp_path / "shared" / "data")
    return folder


@pytest.mark.parametrize(("document", "command"), COMMANDS, ids=[c for _, c in COMMANDS])
def test_command_runs_as_written(document, command, tmp_path):
    assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0, f"{document}: {command}"
    words = shlex.split(command)
    bin_dir = Path(sys.executable).parent
    if words[0] == "make":
        target = words[1]
        made = subprocess.run(["make", "-n", *words[1:]], cwd=REPO, capture_output=True, text=True)
        assert made.returncode == 0, f"{document}: {command}\n{made.stderr}"
        if target in SNAKEMAKE_TARGETS:
            args = next((shlex.split(w.split("=", 1)[1]) for w in words[2:] if w.startswith("ARGS=")), [])
            snakemake(workflow_copy(tmp_path, command), "-n", *args)
    elif words[0] == ".venv/bin/snakemake":
        snakemake(workflow_copy(tmp_path, command), *words[1:], "-n")
    elif words[0] == ".venv/bin/python":
        argv = [str(bin_dir / "python"), *words[1:]]
        if "pipeline.config" not in command and "--help" not in words:
            argv.append("--help")
        result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 0, f"{document}: {command}\n{result.stdout}\n{result.stderr}"
    else:
        pytest.fail(f"{document}: {command!r}: add a way to check this kind of command here")
