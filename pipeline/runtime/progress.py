"""Progress of a stage's long loop, for the person following its log.

On a terminal it is a tqdm bar. In a log file (the workflow sends every job's output to
``results/<study>/logs/``) it is a plain line at most every ``every_s`` seconds and at the end::

    pretrain: step 120/250 (48%), 0.91 step/s, 2m12s elapsed, ETA 2m23s, loss 0.0412

The rate counts only the units done by this process, so a resumed run's ETA is not skewed by
the units its checkpoint already held.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

# Seconds between log lines: frequent enough to see a job move, few enough to read.
EVERY_S = 10.0


def duration(seconds: float) -> str:
    """``2h03m``, ``4m05s`` or ``12s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """Count, share, rate and ETA of ``total`` units, ``done`` of them already done.

    Args:
        label: what runs (``pretrain``, ``train flow_grpo/seed0``).
        total: units in all.
        unit: the unit's name (``step``, ``iteration``, ``image``).
        done: units done before this process started (a resumed run).
        stream: where lines go (default stdout); a terminal gets a bar instead.
        every_s: the shortest interval between two log lines.
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str = "step",
        done: int = 0,
        stream: TextIO | None = None,
        every_s: float = EVERY_S,
    ):
        self.label, self.total, self.unit, self.done = label, total, unit, done
        self.stream = stream or sys.stdout
        self.every_s, self._first = every_s, done
        self._began = self._last = time.monotonic()
        terminal = getattr(self.stream, "isatty", lambda: False)()
        self._bar = None
        if terminal:
            self._bar = tqdm(total=total, initial=done, desc=label, unit=unit, file=self.stream)

    def line(self, note: str = "") -> str:
        """The current state as one line."""
        elapsed = time.monotonic() - self._began
        rate = (self.done - self._first) / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        left = self.total - self.done
        eta = f", ETA {duration(left / rate)}" if rate > 0 and left > 0 else ""
        text = f"{self.label}: {self.unit} {self.done}/{self.total}{share}, {rate:.3g} {self.unit}/s, "
        return text + f"{duration(elapsed)} elapsed{eta}" + (f", {note}" if note else "")

    def advance(self, units: int = 1, note: str = "") -> None:
        """Count ``units`` more done; print a line when ``every_s`` has passed or all are done."""
        self.done += units
        if self._bar is not None:
            self._bar.update(units)
            if note:
                self._bar.set_postfix_str(note)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            print(self.line(note), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
