"""The job environment the workflow sets up for its stages."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def interpreter_first_on_path() -> None:
    """Put this interpreter's folder first on ``PATH``, so that the job shells' ``python -m
    pipeline.stages.<rule>`` is the Python running Snakemake (``.venv/bin/snakemake`` then works
    without activating the venv). With ``--sdm conda`` Snakemake activates the rule's env
    inside the job, which comes first again."""
    here = str(Path(sys.executable).parent)
    entries = os.environ.get("PATH", "").split(os.pathsep)
    if entries[0] != here:
        os.environ["PATH"] = os.pathsep.join([here, *entries])
