"""A pool of reward worker processes, each with its own rewards built once (one
single-threaded OCR engine per worker), shared by the scoring stage and the trainer.

Workers fork from a clean forkserver that has imported :mod:`pipeline.rewards` once, so they
start fast (spawn costs ~2 s per worker) and never inherit a caller's thread pools: a plain
fork of a process that has run torch or onnxruntime can deadlock in the child (seen in the
test suite). Where forkserver does not exist (Windows, macOS on old Pythons), spawn.

Workers ignore SIGINT: Ctrl-C reaches the terminal's whole process group, and a worker that
died of it would leave its task unanswered and the parent waiting on the pool for ever. The
parent alone handles it and ends the pool (``terminate``), which stops the workers.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import signal

from pipeline.rewards import Reward, build_rewards

_worker_rewards: dict[str, Reward] = {}


def _init_worker(names: list[str], settings: dict) -> None:
    global _worker_rewards
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_rewards = build_rewards(names, settings, ocr_threads=1)


def worker_rewards() -> dict[str, Reward]:
    """The rewards of the worker process this runs in (built by :func:`reward_pool`)."""
    return _worker_rewards


def reward_pool(workers: int, names: list[str], settings: dict) -> multiprocessing.pool.Pool:
    """``workers`` processes in which :func:`worker_rewards` returns the rewards ``names``."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["pipeline.rewards"])
    else:
        context = multiprocessing.get_context("spawn")
    return context.Pool(workers, _init_worker, (names, settings))
