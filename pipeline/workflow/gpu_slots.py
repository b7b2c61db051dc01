"""Pin a job to GPUs of its own: ``python -m pipeline.workflow.gpu_slots N -- COMMAND ...``.

Snakemake's ``--resources gpu=K`` caps how many GPUs the running jobs hold together, but it
does not say which: without pinning every job would land on ``cuda:0``. This wrapper takes
``N`` free devices (an exclusive ``flock`` on one file per device in a slots folder shared by
every job on the machine), sets ``CUDA_VISIBLE_DEVICES`` to them and replaces itself with
``COMMAND``, which keeps the locks (inherited descriptors) until it and every process it
started (torchrun's ranks) have exited, however they end. A job that finds fewer than ``N``
free waits for them, taking all ``N`` at once or none, so two waiting jobs cannot deadlock.

- The candidates are ``CUDA_VISIBLE_DEVICES`` when it is set, else every GPU the NVIDIA driver
  lists (``/proc/driver/nvidia/gpus``). With none (a CPU machine) ``COMMAND`` runs as it is.
- ``N`` = 0 hides every GPU from ``COMMAND`` (a job granted none uses none).
- Under SLURM (``SLURM_JOB_ID`` set) the scheduler has pinned the job already: the wrapper
  only runs ``COMMAND``.
- The slots folder is ``$MULTIGRPO_GPU_SLOTS``, else ``<tmp>/multigrpo-gpu-slots-<uid>``.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path

WAIT_SECONDS = 2.0  # between attempts while other jobs hold the devices


def candidate_devices(environ: dict[str, str]) -> list[str]:
    """The device ids this machine lets a job use (strings, as ``CUDA_VISIBLE_DEVICES`` takes)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    listed = Path("/proc/driver/nvidia/gpus")
    return [str(i) for i in range(len(list(listed.iterdir())))] if listed.is_dir() else []


def slots_folder(environ: dict[str, str]) -> Path:
    default = Path(tempfile.gettempdir()) / f"multigrpo-gpu-slots-{os.getuid()}"
    return Path(environ.get("MULTIGRPO_GPU_SLOTS") or default)


def try_take(folder: Path, devices: list[str], count: int) -> tuple[list[str], list[int]]:
    """``count`` of ``devices`` locked (their ids and open lock descriptors), or none."""
    taken, handles = [], []
    for device in devices:
        fd = os.open(folder / f"gpu{device}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        taken.append(device)
        handles.append(fd)
        if len(taken) == count:
            return taken, handles
    for fd in handles:
        os.close(fd)  # not enough free: give back what was taken, so no two jobs hold halves
    return [], []


def acquire(
    folder: Path, devices: list[str], count: int, wait: float = WAIT_SECONDS
) -> tuple[list[str], list[int]]:
    """Block until ``count`` of ``devices`` are free; their ids and lock descriptors."""
    folder.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        taken, handles = try_take(folder, devices, count)
        if taken:
            return taken, handles
        if not told:
            print(
                f"gpu_slots: waiting for {count} of GPUs {','.join(devices)} (held by other jobs)",
                file=sys.stderr,
            )
            told = True
        time.sleep(wait)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gpus", type=int, help="GPUs the job was granted (Snakemake's resources.gpu)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    if args.gpus < 0:
        parser.error(f"gpus {args.gpus}: must be 0 or more")
    environ = dict(os.environ)
    if "SLURM_JOB_ID" not in environ:
        devices = candidate_devices(environ)
        if args.gpus == 0:
            environ["CUDA_VISIBLE_DEVICES"] = ""
        elif devices:
            if args.gpus > len(devices):
                raise SystemExit(
                    f"gpu_slots: the job asks for {args.gpus} GPUs, this machine shows {len(devices)} "
                    f"({','.join(devices)}); lower train.gpus or --resources gpu"
                )
            taken, handles = acquire(slots_folder(environ), devices, args.gpus)
            for fd in handles:
                os.set_inheritable(fd, True)  # held by COMMAND and its children until they exit
            environ["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
            print(f"gpu_slots: CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']}", file=sys.stderr)
    os.execvpe(command[0], command, environ)
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
