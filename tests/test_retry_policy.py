"""The retry policy as a pure decision: fatal errors stop, unfixable ones fail, retries are
bounded per sort (429s apart), an unreachable endpoint stops, and waits follow the documented
backoff and `Retry-After` formulas. No socket and no clock: histories and times are values,
jitter comes from a seeded (or scripted) random stream."""

from __future__ import annotations

import random

import pytest

from backends.errors import (
    AuthenticationError,
    ConnectionFailed,
    ContextLengthExceeded,
    RateLimited,
    Redirected,
    ServerError,
    UnknownModel,
)
from engine.retry_policy import Action, RetryHistory, RetryPolicy


class ScriptedRandom(random.Random):
    """`random()` returns the scripted values in turn (uniform(a, b) uses it too)."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def policy(rng: random.Random | None = None, **bounds: float) -> RetryPolicy:
    settings = {"max_retries": 2, "max_rate_limited_retries": 3, "backoff_base_s": 1.0}
    settings.update(bounds)
    return RetryPolicy(**settings, rng=rng or random.Random(7))  # type: ignore[arg-type]


def failed(error, times: int, *, at: float = 10.0) -> RetryHistory:
    history = RetryHistory()
    for _ in range(times):
        history = history.after(error, at)
    return history


@pytest.mark.parametrize(
    "error", [AuthenticationError("no"), UnknownModel("no"), Redirected("moved")]
)
def test_an_endpoint_failure_stops_on_the_first_try(error) -> None:
    verdict = policy().decide(error, RetryHistory(), last_success=5.0)
    assert verdict.action is Action.STOP
    assert verdict.reason == str(error)


def test_an_error_retrying_cannot_fix_fails_only_the_request() -> None:
    verdict = policy().decide(ContextLengthExceeded("too long"), RetryHistory(), 5.0)
    assert verdict.action is Action.FAIL


def test_retries_are_bounded_and_429s_count_apart() -> None:
    rules = policy()
    error = ServerError("boom")
    assert [rules.decide(error, failed(error, n), 20.0).action for n in (1, 2, 3)] == [
        Action.RETRY,
        Action.RETRY,
        Action.FAIL,
    ]
    limited = RateLimited("slow down")
    # Two server errors and three 429s: neither bound is spent.
    history = failed(error, 2).after(limited, 11.0).after(limited, 12.0).after(limited, 13.0)
    assert (history.attempts, history.rate_limited, history.failing_since) == (2, 3, 10.0)
    assert rules.decide(limited, history, 20.0).action is Action.RETRY
    assert rules.decide(limited, history.after(limited, 14.0), 20.0).action is Action.FAIL


def test_connection_failures_stop_only_when_nothing_got_through_meanwhile() -> None:
    rules = policy()
    error = ConnectionFailed("refused")
    spent = failed(error, 3, at=10.0)
    assert rules.decide(error, spent, last_success=float("-inf")).action is Action.STOP
    assert "unreachable" in rules.decide(error, spent, last_success=9.0).reason
    # A call got through after this request first failed: the endpoint flaps, the request fails.
    assert rules.decide(error, spent, last_success=11.0).action is Action.FAIL


def test_backoff_doubles_its_ceiling_up_to_the_maximum_with_jitter_in_its_upper_half() -> None:
    rules = policy(ScriptedRandom(0.0, 1.0, 0.5, 0.0), backoff_base_s=0.5, backoff_max_s=3.0)
    # Ceilings: 0.5 * 2**e capped at 3.0; the draw u maps to c/2 + u * c/2.
    assert rules.backoff(0) == pytest.approx(0.25)  # u=0: c/2, c=0.5
    assert rules.backoff(1) == pytest.approx(1.0)  # u=1: c, c=1.0
    assert rules.backoff(2) == pytest.approx(1.5)  # u=0.5: 3c/4, c=2.0
    assert rules.backoff(10) == pytest.approx(1.5)  # u=0: c/2, c capped at 3.0


def test_seeded_backoff_stays_within_its_band_and_replays() -> None:
    first = policy(random.Random(3), backoff_base_s=0.5, backoff_max_s=60.0)
    again = policy(random.Random(3), backoff_base_s=0.5, backoff_max_s=60.0)
    for earlier in range(12):
        ceiling = min(60.0, 0.5 * 2**earlier)
        wait = first.delay(ServerError("boom"), earlier)
        assert ceiling / 2 <= wait <= ceiling
        assert wait == again.delay(ServerError("boom"), earlier)


def test_a_429_waits_at_least_retry_after_and_at_most_half_again() -> None:
    rules = policy(ScriptedRandom(0.0, 1.0))
    limited = RateLimited("slow down", retry_after=4.0)
    assert rules.delay(limited, 0) == pytest.approx(4.0)
    assert rules.delay(limited, 50) == pytest.approx(6.0)  # not the backoff of 50 failures
    # Without Retry-After, a 429 backs off like any other failure.
    assert policy(ScriptedRandom(1.0)).delay(RateLimited("slow"), 2) == pytest.approx(4.0)


def test_earlier_counts_failures_of_the_same_sort() -> None:
    history = failed(ServerError("x"), 2).after(RateLimited("y"), 3.0)
    assert history.earlier(ServerError("x")) == 2
    assert history.earlier(RateLimited("y")) == 1
    assert history.tries == 3
