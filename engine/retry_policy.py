"""When a failed call is tried again, and after how long: one pure decision for every call the
engine sends (generation and embeddings alike), from the error and the request's history.

The rules:

- Credentials refused, a model the server does not serve, or a redirect condemn the endpoint:
  `STOP` (no later request can succeed either).
- Other errors that retrying cannot fix (`retryable` false) fail the request at once: `FAIL`.
- A retryable error is retried until its retries are spent. 429s (the server pacing the client,
  not the request failing) count apart from other failures and have their own, larger bound, so
  a long storm of 429s still ends with answers while a broken server still ends.
- A `ConnectionFailed` whose retries are spent while not one call of the endpoint got through
  since the request first failed means the endpoint is gone, not flapping: `STOP`.

How long to wait (`delay`), with `e` the failures of the same sort before this one (429s or
others), `b` = `backoff_base_s`, `M` = `backoff_max_s` and `U(lo, hi)` a uniform draw:

- a 429 with `Retry-After: r`: `r * (1 + U(0, 1) / 2)`, i.e. uniform in `[r, 1.5 r]`: never
  sooner than the server asked, and a window of refused calls does not come back together;
- otherwise exponential backoff with jitter: with the ceiling `c = min(M, b * 2**e)`, the wait
  is `U(c / 2, c)`. The expected wait is `3c/4`; the ceiling doubles per failure until it
  reaches `M`. Jitter spreads the retries of a burst of failed calls; the lower half is cut
  off so that a retry never comes back almost at once to a server that just failed.

Everything here is a function of its arguments and one seeded random stream: no clock, no
socket and no engine state, so the rules are tested with a seeded `random.Random`. A request
that finally fails raises `RequestFailed`, with the verdict's reason.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum

from backends.errors import (
    AuthenticationError,
    BackendError,
    ConnectionFailed,
    GpoError,
    RateLimited,
    Redirected,
    UnknownModel,
)


class RequestFailed(GpoError):
    """A request that could not be answered: retries exhausted or an error retrying cannot fix.

    `fatal` marks a failure of the endpoint itself (a `STOP` verdict): no later request can
    succeed either, so callers should stop rather than record it against one sample.
    """

    def __init__(self, reason: str, kind: str, attempts: int, *, fatal: bool = False) -> None:
        super().__init__(f"request failed after {attempts} attempt(s): {reason}")
        self.reason = reason
        self.kind = kind
        self.attempts = attempts
        self.fatal = fatal


@dataclass(frozen=True, slots=True)
class RetryHistory:
    """One request's failures so far: `attempts` (other than 429s), `rate_limited` (429s), and
    when it first failed (`failing_since`, on the caller's clock)."""

    attempts: int = 0
    rate_limited: int = 0
    failing_since: float | None = None

    @property
    def tries(self) -> int:
        """Failed tries of every sort."""
        return self.attempts + self.rate_limited

    def earlier(self, error: BackendError) -> int:
        """Failures of the same sort as `error` (429s or not) recorded so far."""
        return self.rate_limited if isinstance(error, RateLimited) else self.attempts

    def after(self, error: BackendError, now: float) -> RetryHistory:
        """This history with `error`, seen at `now`, counted."""
        since = now if self.failing_since is None else self.failing_since
        if isinstance(error, RateLimited):
            return RetryHistory(self.attempts, self.rate_limited + 1, since)
        return RetryHistory(self.attempts + 1, self.rate_limited, since)


class Action(Enum):
    """What to do with a request after a failure."""

    RETRY = "retry"
    FAIL = "fail"  # this request fails; others may still succeed
    STOP = "stop"  # the endpoint is unusable: stop the engine


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision on one failure, and the reason a failure reports."""

    action: Action
    reason: str


class RetryPolicy:
    """The rules of the module docs over a few bounds and a seeded random stream."""

    def __init__(
        self,
        *,
        max_retries: int = 8,
        max_rate_limited_retries: int = 200,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.max_rate_limited_retries = max_rate_limited_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.rng = rng if rng is not None else random.Random(0)

    @staticmethod
    def is_fatal(error: BackendError) -> bool:
        """The endpoint itself is unusable: no later request can succeed either."""
        return isinstance(error, AuthenticationError | UnknownModel | Redirected)

    def spent(self, error: BackendError, history: RetryHistory) -> bool:
        """Whether the retries are used up; `history` counts this failure."""
        if isinstance(error, RateLimited):
            return history.rate_limited > self.max_rate_limited_retries
        return history.attempts > self.max_retries

    def decide(self, error: BackendError, history: RetryHistory, last_success: float) -> Verdict:
        """Retry, fail or stop after `error`. `history` counts this failure (for a retryable
        error); `last_success`: when a call of the endpoint last got through (same clock as
        `history.failing_since`; `-inf` if never)."""
        if self.is_fatal(error):
            return Verdict(Action.STOP, str(error))
        if not error.retryable:
            return Verdict(Action.FAIL, str(error))
        if not self.spent(error, history):
            return Verdict(Action.RETRY, str(error))
        since = history.failing_since
        if isinstance(error, ConnectionFailed) and since is not None and last_success < since:
            # Not one call got through while this request spent all its retries.
            return Verdict(Action.STOP, f"the endpoint is unreachable: {error}")
        return Verdict(Action.FAIL, str(error))

    def delay(self, error: BackendError, earlier: int) -> float:
        """Seconds before the next try; `earlier`: failures of the same sort (429s or not)
        before this one."""
        retry_after = error.retry_after if isinstance(error, RateLimited) else None
        if retry_after is not None:
            return retry_after * (1.0 + 0.5 * self.rng.random())
        return self.backoff(earlier)

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: uniform in [c/2, c], c = min(max, base * 2**attempts)
        (see the module docs)."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2**attempts))
        return self.rng.uniform(ceiling / 2, ceiling)
