"""Progress lines in a log: count, share, rate, ETA, at most one per interval, always the last."""

from __future__ import annotations

import io

import pytest

from pipeline.runtime import progress as progress_module
from pipeline.runtime.progress import Progress, duration


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_duration_formats():
    assert [duration(s) for s in (0, 12.4, 65, 3600 + 180)] == ["0s", "12s", "1m05s", "1h03m"]


def test_lines_carry_rate_and_eta_and_respect_the_interval(clock):
    out = io.StringIO()
    progress = Progress("pretrain", 10, "step", stream=out, every_s=10.0)
    clock.now += 4.0
    progress.advance()  # 4 s since the start: under the interval, no line
    assert out.getvalue() == ""
    clock.now += 6.0
    progress.advance(note="loss 0.5")  # 2 steps in 10 s: 0.2 step/s, 8 left -> 40 s
    assert out.getvalue() == "pretrain: step 2/10 (20%), 0.2 step/s, 10s elapsed, ETA 40s, loss 0.5\n"
    clock.now += 1.0
    progress.advance(8)  # the last unit always prints, with no ETA
    assert out.getvalue().splitlines()[-1] == "pretrain: step 10/10 (100%), 0.909 step/s, 11s elapsed"


def test_a_resumed_run_counts_only_its_own_units(clock):
    out = io.StringIO()
    progress = Progress("train", 8, "iteration", done=6, stream=out, every_s=0.0)
    clock.now += 30.0
    progress.advance()  # one iteration in 30 s, not seven
    assert "iteration 7/8 (88%), 0.0333 iteration/s, 30s elapsed, ETA 30s" in out.getvalue()
