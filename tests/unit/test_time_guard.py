"""The wall-clock guard: predicts the next unit of work, then fails or stops."""

from __future__ import annotations

import pytest

from pipeline.runtime.time_guard import TimeGuard, TimeLimitReached


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_trips_before_a_unit_that_would_end_past_the_limit():
    clock = FakeClock()
    guard = TimeGuard(1.0, "fail", "train.max_minutes", clock=clock)
    assert not guard.would_exceed()  # nothing timed yet, nothing elapsed
    guard.start_unit()
    clock.now = 25.0
    guard.end_unit()
    clock.now = 30.0
    assert not guard.would_exceed()  # 30 s + 25 s = 55 s < 60 s
    clock.now = 40.0
    assert guard.would_exceed()  # 40 s + 25 s = 65 s > 60 s, though only 40 s have passed


def test_fail_raises_with_the_key_and_what_to_do():
    clock = FakeClock()
    guard = TimeGuard(0.5, "fail", "train.max_minutes", clock=clock)
    clock.now = 31.0
    expected = r"train.max_minutes = 0.5 min: 3 of 8 iterations done"
    with pytest.raises(TimeLimitReached, match=expected) as error:
        guard.trip(3, 8, "iterations")
    assert "Rerun to resume" in str(error.value) and "on_time_limit: stop" in str(error.value)


def test_stop_returns_the_line_to_print():
    guard = TimeGuard(2.0, "stop", "pretrain.max_minutes", clock=FakeClock())
    line = guard.trip(100, 250, "steps")
    assert "pretrain.max_minutes = 2 min: 100 of 250 steps done" in line and "cut short" in line


def test_an_unknown_action_names_the_key():
    with pytest.raises(ValueError, match=r"train.on_time_limit 'warn'"):
        TimeGuard(1.0, "warn", "train.max_minutes")
