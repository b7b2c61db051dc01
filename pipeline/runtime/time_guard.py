"""The guards of a training stage: a stall watchdog and an optional wall-clock budget.

Step and iteration counts are a stage's contract: they, not the machine's speed, decide what
a result means. So the guards on by default catch a job that has stopped making progress, not a
machine that is merely slow or busy:

- ``stall_minutes`` (on by default): when no unit of work (a step, an iteration) finishes for
  that long — a deadlock, a hung collective, a step that runs away — a watchdog thread prints
  every thread's stack to the log, stops the job's worker processes and ends the job with exit
  code :data:`STALL_EXIT_CODE`. Checkpoints are written atomically, so a rerun resumes from the
  last one. A run that keeps finishing units finishes, however busy the machine.
- ``max_minutes`` (off by default, ``null``): a budget of wall time for one invocation (a rerun
  resumes from the checkpoint with a fresh allowance). It trips *before* a unit of work that
  would end past it, predicting that unit's duration from the last one, so a stage never
  overshoots by a whole unit. ``on_time_limit`` then decides: ``fail`` stops the stage with an
  error (its checkpoint kept, so a rerun resumes), ``stop`` ends it early with what it has,
  which ``train_info.json``, the model card and the report then mark as cut short.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import sys
import threading
import time

ACTIONS = ("fail", "stop")
# The exit status of a job its stall watchdog ended (distinct from 1, an error, and 2, argparse).
STALL_EXIT_CODE = 3


class TimeLimitReached(SystemExit):
    """The guard tripped with ``on_time_limit: fail``; its message says what to do."""


def end_stalled_process(message: str) -> None:
    """Print ``message`` and every thread's stack to stderr, stop the worker processes, exit.

    ``os._exit``: a stalled main thread may hold the locks an orderly exit would wait on."""
    print(message, file=sys.stderr, flush=True)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for child in multiprocessing.active_children():
        child.kill()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(STALL_EXIT_CODE)


class StallWatchdog:
    """Calls ``on_stall(message)`` from a thread when :meth:`beat` has not been called for
    ``stall_minutes`` (``None``: never). Use as a context manager around the work it watches."""

    def __init__(
        self, stall_minutes: float | None, key: str, clock=time.monotonic, on_stall=end_stalled_process
    ):
        self.limit_s = None if stall_minutes is None else 60 * stall_minutes
        self.key, self.clock, self.on_stall = key, clock, on_stall
        self.last_beat = clock()
        self.units = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """One unit of work finished."""
        self.last_beat = self.clock()
        self.units += 1

    def stall_message(self) -> str | None:
        """Why the job counts as stalled now, or ``None`` while it is not."""
        if self.limit_s is None:
            return None
        quiet_s = self.clock() - self.last_beat
        if quiet_s <= self.limit_s:
            return None
        since = f"the last of {self.units} finished" if self.units else "the job started"
        return (
            f"stall watchdog {self.key} = {self.limit_s / 60:g} min: no progress for {quiet_s / 60:.1f} min "
            f"(since {since}); the job is stopped, its last checkpoint kept (the stacks below show where it "
            f"hung). Rerun to resume; if each unit is merely slow on this machine, raise {self.key}."
        )

    def _watch(self, poll_s: float) -> None:
        while not self._stopped.wait(poll_s):
            message = self.stall_message()
            if message is not None:
                self.on_stall(message)
                return

    def __enter__(self) -> StallWatchdog:
        self.last_beat = self.clock()
        if self.limit_s is not None:
            # Poll often enough to stop within a tenth of the limit (and at least every 30 s).
            poll_s = min(max(self.limit_s / 10, 0.05), 30.0)
            self._thread = threading.Thread(
                target=self._watch, args=(poll_s,), name="stall-watchdog", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()


class TimeGuard:
    """The guards of one training loop (section ``pretrain`` or ``train``): the wall-clock budget
    ``max_minutes`` (``None``: none), checked between units, and the stall watchdog, running for
    as long as the guard is entered as a context manager."""

    def __init__(
        self,
        section: str,
        max_minutes: float | None,
        action: str,
        stall_minutes: float | None,
        clock=time.perf_counter,
    ):
        if action not in ACTIONS:
            raise ValueError(f"{section}.on_time_limit {action!r}: expected one of {ACTIONS}")
        self.key = f"{section}.max_minutes"
        self.limit_s = None if max_minutes is None else 60 * max_minutes
        self.action, self.clock = action, clock
        self.watchdog = StallWatchdog(stall_minutes, f"{section}.stall_minutes")
        self.began = clock()
        self.last_unit_s = 0.0
        self._unit_began: float | None = None

    def __enter__(self) -> TimeGuard:
        self.watchdog.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.watchdog.__exit__(*exc)

    def elapsed_s(self) -> float:
        return self.clock() - self.began

    def start_unit(self) -> None:
        """Mark the start of one unit of work (a step, an iteration) to time it."""
        self._unit_began = self.clock()

    def end_unit(self) -> None:
        if self._unit_began is not None:
            self.last_unit_s = self.clock() - self._unit_began
        self.watchdog.beat()

    def would_exceed(self) -> bool:
        """Would the next unit, as long as the last one, end past the budget?"""
        return self.limit_s is not None and self.elapsed_s() + self.last_unit_s > self.limit_s

    def trip(self, done: int, wanted: int, unit: str) -> str:
        """Fail (raise :class:`TimeLimitReached`) or return the line that ``stop`` prints."""
        message = (
            f"time guard {self.key} = {self.limit_s / 60:g} min: {done} of {wanted} {unit} done after "
            f"{self.elapsed_s() / 60:.1f} min in this run (the next would take about "
            f"{self.last_unit_s:.0f} s more)"
        )
        if self.action == "fail":
            raise TimeLimitReached(
                f"{message}. Rerun to resume from the last checkpoint, or raise {self.key} "
                f"(null: no budget, the stall watchdog still stops a job that hangs); "
                f"'on_time_limit: stop' keeps a result cut short instead."
            )
        return f"{message}; stopping early (on_time_limit: stop): the result is marked as cut short"
