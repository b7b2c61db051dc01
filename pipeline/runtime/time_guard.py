"""The wall-clock guard of a training stage.

Step and iteration counts are a stage's contract: they, not the machine's speed, decide what
a result means. ``max_minutes`` only guards against a machine far slower or busier than the
configured counts assume. It counts this invocation's wall time (a rerun resumes from the
checkpoint with a fresh allowance) and trips *before* a unit of work that would end past
it, predicting that unit's duration from the last one, so a stage never overshoots by a
whole iteration. When it trips, ``on_time_limit`` decides: ``fail`` stops the stage with an
error (its checkpoint kept, so a rerun resumes), ``stop`` ends it early with what it has,
which ``train_info.json``, the model card and the report then mark as cut short.
"""

from __future__ import annotations

import time

ACTIONS = ("fail", "stop")


class TimeLimitReached(SystemExit):
    """The guard tripped with ``on_time_limit: fail``; its message says what to do."""


class TimeGuard:
    def __init__(self, max_minutes: float, action: str, key: str, clock=time.perf_counter):
        if action not in ACTIONS:
            raise ValueError(f"{key.rsplit('.', 1)[0]}.on_time_limit {action!r}: expected one of {ACTIONS}")
        self.limit_s, self.action, self.key, self.clock = 60 * max_minutes, action, key, clock
        self.began = clock()
        self.last_unit_s = 0.0
        self._unit_began: float | None = None

    def elapsed_s(self) -> float:
        return self.clock() - self.began

    def start_unit(self) -> None:
        """Mark the start of one unit of work (a step, an iteration) to time it."""
        self._unit_began = self.clock()

    def end_unit(self) -> None:
        if self._unit_began is not None:
            self.last_unit_s = self.clock() - self._unit_began

    def would_exceed(self) -> bool:
        """Would the next unit, as long as the last one, end past the limit?"""
        return self.elapsed_s() + self.last_unit_s > self.limit_s

    def trip(self, done: int, wanted: int, unit: str) -> str:
        """Fail (raise :class:`TimeLimitReached`) or return the line that ``stop`` prints."""
        message = (
            f"time guard {self.key} = {self.limit_s / 60:g} min: {done} of {wanted} {unit} done after "
            f"{self.elapsed_s() / 60:.1f} min in this run (the next would take about "
            f"{self.last_unit_s:.0f} s more)"
        )
        if self.action == "fail":
            raise TimeLimitReached(
                f"{message}. The machine is slower or busier than the configured {unit} assume. "
                f"Rerun to resume from the last checkpoint, or raise {self.key}; "
                f"'on_time_limit: stop' keeps a result cut short instead."
            )
        return f"{message}; stopping early (on_time_limit: stop): the result is marked as cut short"
