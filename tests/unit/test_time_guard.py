"""The guards of a training loop: the optional wall-clock budget (predicts the next unit of work,
then fails or stops) and the stall watchdog (ends a job that stops making progress)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from pipeline.config.types import PretrainConfig, TrainConfig
from pipeline.runtime.time_guard import STALL_EXIT_CODE, StallWatchdog, TimeGuard, TimeLimitReached


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_trips_before_a_unit_that_would_end_past_the_limit():
    clock = FakeClock()
    guard = TimeGuard("train", 1.0, "fail", None, clock=clock)
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
    guard = TimeGuard("train", 0.5, "fail", None, clock=clock)
    clock.now = 31.0
    expected = r"train.max_minutes = 0.5 min: 3 of 8 iterations done"
    with pytest.raises(TimeLimitReached, match=expected) as error:
        guard.trip(3, 8, "iterations")
    assert "Rerun to resume" in str(error.value) and "on_time_limit: stop" in str(error.value)


def test_stop_returns_the_line_to_print():
    guard = TimeGuard("pretrain", 2.0, "stop", None, clock=FakeClock())
    line = guard.trip(100, 250, "steps")
    assert "pretrain.max_minutes = 2 min: 100 of 250 steps done" in line and "cut short" in line


def test_an_unknown_action_names_the_key():
    with pytest.raises(ValueError, match=r"train.on_time_limit 'warn'"):
        TimeGuard("train", 1.0, "warn", None)


@pytest.mark.parametrize("config_class", [PretrainConfig, TrainConfig])
def test_by_default_a_slow_job_that_keeps_progressing_is_never_stopped(config_class):
    """A busy machine (a fifth of its idle speed: a step every 6 s for 10 hours) is no reason to
    fail: by default there is no budget, and the watchdog hears a step every 6 s."""
    cfg, clock = config_class(), FakeClock()
    assert cfg.max_minutes is None and cfg.stall_minutes >= 10
    guard = TimeGuard("train", cfg.max_minutes, cfg.on_time_limit, cfg.stall_minutes, clock=clock)
    guard.watchdog.clock = clock
    for _ in range(6000):
        assert not guard.would_exceed()
        guard.start_unit()
        clock.now += 6.0
        guard.end_unit()
        assert guard.watchdog.stall_message() is None


def test_the_watchdog_names_its_key_once_no_unit_finished_for_its_limit():
    clock = FakeClock()
    watchdog = StallWatchdog(2.0, "pretrain.stall_minutes", clock=clock)
    clock.now = 119.0
    assert watchdog.stall_message() is None
    watchdog.beat()
    clock.now = 119.0 + 121.0
    message = watchdog.stall_message()
    assert message.startswith("stall watchdog pretrain.stall_minutes = 2 min: no progress for 2.0 min")
    assert "the last of 1 finished" in message and "Rerun to resume" in message
    assert StallWatchdog(None, "train.stall_minutes", clock=clock).stall_message() is None


def test_the_watchdog_thread_calls_on_stall_and_stops_with_its_block():
    stalls = []
    with StallWatchdog(0.5 / 60, "train.stall_minutes", on_stall=stalls.append) as watchdog:
        for _ in range(10):  # 1 s of units of 0.1 s: no stall
            time.sleep(0.1)
            watchdog.beat()
        assert stalls == []
        time.sleep(1.5)  # then nothing for 1.5 s, three times the limit
    assert len(stalls) == 1 and "no progress for" in stalls[0]
    assert not watchdog._thread.is_alive()


HUNG_JOB = textwrap.dedent(
    """
    import multiprocessing, threading, time
    from pipeline.runtime.time_guard import TimeGuard

    def worker():
        time.sleep(600)

    def wait_for_a_lock_nobody_releases(lock):
        lock.acquire()

    if __name__ == "__main__":
        child = multiprocessing.get_context("spawn").Process(target=worker, daemon=True)
        child.start()
        print("child", child.pid, flush=True)
        lock = threading.Lock()
        lock.acquire()
        with TimeGuard("train", None, "fail", 0.02) as guard:  # 1.2 s without progress
            guard.start_unit()
            guard.end_unit()
            wait_for_a_lock_nobody_releases(lock)
    """
)


def test_a_hung_job_is_ended_with_its_stack_and_its_worker_processes(tmp_path):
    """A real process blocked on a lock (as training was, on a dead reward pool's lock) ends within
    seconds: exit code 3, the watchdog's message, the stack of the hung call, no orphaned worker."""
    script = tmp_path / "hung.py"
    script.write_text(HUNG_JOB)
    began = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == STALL_EXIT_CODE, result.stderr
    assert time.monotonic() - began < 60
    assert "stall watchdog train.stall_minutes = 0.02 min: no progress" in result.stderr
    assert "wait_for_a_lock_nobody_releases" in result.stderr  # the main thread's stack
    child_pid = int(result.stdout.split()[1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
