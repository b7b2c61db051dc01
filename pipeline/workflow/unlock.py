"""``make unlock``: remove the lock of a Snakemake run that was killed, unless one still runs.

    python -m pipeline.workflow.unlock [snakemake arguments, e.g. --configfile FILE]

A Snakemake run killed with SIGKILL (or a closed terminal, a lost machine) leaves its lock in
``.snakemake/locks``, and the next run stops with "Directory cannot be locked". ``snakemake
--unlock`` removes it, but also the lock of a run that is alive, whose outputs a second run
would then overwrite. So this looks for a Snakemake process working in this folder first
(Linux's /proc) and unlocks only when there is none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _is_snakemake(argv: list[str]) -> bool:
    """Whether a command line runs Snakemake (its script, or ``python -m snakemake``)."""
    names = [Path(arg).name for arg in argv[:3]]
    return "snakemake" in names or any(
        a == "-m" and b == "snakemake" for a, b in zip(argv, argv[1:], strict=False)
    )


def snakemakes_in(folder: Path) -> list[int]:
    """The ids of the processes running Snakemake with ``folder`` as their working folder."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:  # ended meanwhile, or another user's
            continue
        command = [arg.decode(errors="replace") for arg in argv if arg]
        if int(entry.name) != os.getpid() and cwd == folder and _is_snakemake(command):
            found.append(int(entry.name))
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    folder = Path.cwd().resolve()
    running = snakemakes_in(folder)
    if running:
        raise SystemExit(
            f"Snakemake is running in {folder} (process {', '.join(map(str, running))}): its lock is not "
            "stale. Wait for it to finish, or stop it (Ctrl-C in its terminal, or kill PID), then rerun"
        )
    args = sys.argv[1:] if argv is None else argv
    return subprocess.run([sys.executable, "-m", "snakemake", "--unlock", *args], check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
