"""Helpers to run Snakemake on a copy of the workflow in a temporary folder."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

from tests.conftest import REPO

# What a study needs from the repository (results/ and .snakemake/ are per copy).
WORKFLOW_PARTS = (
    "Snakefile",
    "config.yaml",
    "configs",
    "rules",
    "pipeline",
    "envs",
    "profiles",
    "datasets/sources",
)


def copy_workflow(dest: Path) -> Path:
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (dest / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / part)
    shutil.copy2(REPO / "tests" / "workflow" / "config_tiny.yaml", dest / "config_tiny.yaml")
    return dest


def snakemake(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run this interpreter's Snakemake in ``cwd`` with its venv first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def planned_jobs(cwd: Path, *args: str) -> Counter:
    """Jobs a dry run plans, by rule (empty when there is nothing to do)."""
    result = snakemake(cwd, "-n", *args)
    out = result.stdout + result.stderr
    if "Job stats:" not in out:
        return Counter()
    table = out.split("Job stats:", 1)[1]
    jobs = Counter()
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match or match.group(1) == "total":
            break
        jobs[match.group(1)] = int(match.group(2))
    return jobs


def config_variant(study: Path, path: str, value) -> str:
    """A copy of the tiny config with key ``path`` (``a.b.c``) set to ``value``; its file name."""
    raw = yaml.safe_load((study / "config_tiny.yaml").read_text())
    *parents, leaf = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    name = f"variant_{path.replace('.', '_')}.yaml"
    (study / name).write_text(yaml.safe_dump(raw))
    return name
