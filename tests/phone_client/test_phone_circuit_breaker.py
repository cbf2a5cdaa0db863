"""The circuit breaker: opens after N failures, backs off doubling to a cap,
lets one trial through, closes on success; the clock is injected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phone_client import CircuitBreaker


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def breaker(clock: Clock, path: Path | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        threshold=3, base_backoff=5.0, max_backoff=300.0, clock=clock, path=path, key="cloud"
    )


def test_opens_after_three_consecutive_failures() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(2):
        cb.record_failure("HTTP 500")
        assert cb.allow() and cb.mode == "closed"
    cb.record_failure("HTTP 500")
    assert not cb.allow() and cb.mode == "open"
    assert cb.retry_in() == pytest.approx(5.0)
    assert "3 failures in a row, last: HTTP 500; next try in 5 s" == cb.describe()


def test_a_success_in_between_resets_the_count() -> None:
    cb = breaker(Clock())
    cb.record_failure()
    cb.record_failure()
    cb.record_success()
    cb.record_failure()
    cb.record_failure()
    assert cb.allow() and cb.mode == "closed"


def test_backoff_doubles_per_failed_trial_up_to_the_cap() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(3):
        cb.record_failure()
    waits = []
    for _ in range(9):
        waits.append(cb.retry_in())
        clock.advance(cb.retry_in())
        assert cb.allow() and cb.mode == "half-open"  # one trial may go out
        cb.record_failure()  # ... and fails
        assert not cb.allow()
    assert waits == [5, 10, 20, 40, 80, 160, 300, 300, 300]


def test_a_successful_trial_closes_it() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(4):
        cb.record_failure()
    clock.advance(cb.retry_in())
    assert cb.allow()
    cb.record_success()
    assert cb.mode == "closed" and cb.retry_in() == 0
    for _ in range(3):
        cb.record_failure()
    assert cb.retry_in() == pytest.approx(5.0)  # back to the base backoff


def test_a_clock_jumping_back_never_stretches_the_wait() -> None:
    clock = Clock()
    cb = breaker(clock)
    for _ in range(3):
        cb.record_failure()
    clock.advance(-10_000)
    assert cb.retry_in() == pytest.approx(5.0)


def test_state_survives_the_process(tmp_path: Path) -> None:
    path = tmp_path / "cloud-breaker.json"
    clock = Clock()
    first = breaker(clock, path)
    for _ in range(3):
        first.record_failure("no answer within 2 s")
    second = breaker(clock, path)  # e.g. the next `phonekey phone unlock`
    assert not second.allow() and second.retry_in() == pytest.approx(5.0)
    assert "no answer within 2 s" in second.describe()
    other = CircuitBreaker(clock=clock, path=path, key="another cloud")
    assert other.allow()
    clock.advance(5)
    second.record_success()
    assert breaker(clock, path).mode == "closed"


@pytest.mark.parametrize("content", ["{", "[]", '{"format": 1, "breakers": {"cloud": 7}}', ""])
def test_an_unreadable_state_file_starts_closed(tmp_path: Path, content: str) -> None:
    path = tmp_path / "cloud-breaker.json"
    path.write_text(content)
    cb = breaker(Clock(), path)
    assert cb.allow()
    for _ in range(3):
        cb.record_failure()
    assert json.loads(path.read_text())["breakers"]["cloud"]["failures"] == 3


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(threshold=0)
    with pytest.raises(ValueError):
        CircuitBreaker(base_backoff=10, max_backoff=5)
