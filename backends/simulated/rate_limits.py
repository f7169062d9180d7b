"""Hosted-API rate limits (API mode): requests and tokens per minute as two token buckets.

The algorithm, so that a client can be written to meet it exactly:

- Each limit L per minute is a bucket of capacity C = max(1, `burst_fraction` x L), starting full,
  refilling continuously at L / 60 per *simulated* second, that is L x time_scale / 60 per real
  second (with time_scale = 100 a "minute" lasts 0.6 real seconds). The level never exceeds C.
- A generation request costs 1 from the request bucket and, from the token bucket, the sum over
  its prompts of (prompt tokens + max_tokens x n), tokens counted by `tokens.count_tokens`;
  max_tokens is what the request asked for (or the endpoint's default), as OpenAI counts it.
- The request is served only if *both* buckets hold its cost at the moment it arrives; then both
  are debited. Otherwise it is answered 429 and debits nothing: a rejected request costs nothing.
  Nothing is refunded when the answer is shorter than max_tokens.
- A request whose token cost exceeds the token bucket's capacity can never be served: it gets a
  429 whose message says "Request too large", with no `Retry-After`.
- `Retry-After` (real seconds, a decimal such as "0.125") and `retry-after-ms` give the time
  until both buckets hold the request's cost, if nothing else is spent meanwhile.
- Every generation answer, 429 or not, carries `x-ratelimit-limit-requests` (L),
  `x-ratelimit-remaining-requests` (whole units left after this request), and
  `x-ratelimit-reset-requests` (real time until the bucket is full again, in OpenAI's style:
  "250ms", "1.5s", "1m0s"), and the same three for `-tokens`, for the limits that are set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from backends.simulated.config import RateLimits


def format_reset(seconds: float) -> str:
    """A duration in OpenAI's header style: "12ms", "1.5s", "2m30s"."""
    if seconds < 1.0:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60.0:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.0f}s"


class TokenBucket:
    """A bucket of `capacity` units refilling continuously at `rate` units per real second."""

    __slots__ = ("capacity", "level", "limit", "rate", "updated")

    def __init__(self, limit: int, capacity: float, rate: float, now: float) -> None:
        self.limit = limit
        self.capacity = capacity
        self.rate = rate
        self.level = capacity
        self.updated = now

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait_for(self, amount: float) -> float:
        """Real seconds until the bucket holds `amount` (0 if it does now)."""
        missing = amount - self.level
        return missing / self.rate if missing > 0 else 0.0

    def headers(self, suffix: str) -> dict[str, str]:
        remaining = max(0, math.floor(self.level))
        return {
            f"x-ratelimit-limit-{suffix}": str(self.limit),
            f"x-ratelimit-remaining-{suffix}": str(remaining),
            f"x-ratelimit-reset-{suffix}": format_reset((self.capacity - self.level) / self.rate),
        }


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The limiter's answer for one request; `headers` go on the response either way."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    message: str = ""


class RateLimiter:
    """Requests-per-minute and tokens-per-minute buckets, checked and debited together."""

    def __init__(
        self,
        limits: RateLimits,
        time_scale: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = limits
        self._time_scale = time_scale
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Full buckets again (a server restart)."""
        now = self._clock()
        self._requests = self._bucket(self._limits.requests_per_minute, now)
        self._tokens = self._bucket(self._limits.tokens_per_minute, now)

    def _bucket(self, per_minute: int | None, now: float) -> TokenBucket | None:
        if per_minute is None:
            return None
        capacity = max(1.0, self._limits.burst_fraction * per_minute)
        return TokenBucket(per_minute, capacity, per_minute * self._time_scale / 60.0, now)

    def acquire(self, tokens: int) -> RateDecision:
        """Debit one request and `tokens` if both fit now; otherwise say how long to wait."""
        now = self._clock()
        buckets: list[tuple[str, TokenBucket, float]] = []
        if self._requests is not None:
            buckets.append(("requests", self._requests, 1.0))
        if self._tokens is not None:
            buckets.append(("tokens", self._tokens, float(tokens)))
        for _, bucket, _ in buckets:
            bucket.refill(now)
        if self._tokens is not None and tokens > self._tokens.capacity:
            return RateDecision(
                allowed=False,
                headers=self._headers(),
                message=(
                    f"Request too large: it needs {tokens} tokens (prompt + max_tokens x n) but "
                    f"the limit is {self._tokens.limit} tokens per minute with a bucket of "
                    f"{self._tokens.capacity:.0f}"
                ),
            )
        waits = {name: bucket.wait_for(cost) for name, bucket, cost in buckets}
        wait = max(waits.values(), default=0.0)
        if wait > 0:
            short = " and ".join(name for name, value in waits.items() if value > 0)
            return RateDecision(
                allowed=False,
                headers=self._headers(),
                retry_after_s=wait,
                message=f"Rate limit reached for {short} per minute; retry after {wait:.3f} s",
            )
        for _, bucket, cost in buckets:
            bucket.level -= cost
        return RateDecision(allowed=True, headers=self._headers())

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._requests is not None:
            headers.update(self._requests.headers("requests"))
        if self._tokens is not None:
            headers.update(self._tokens.headers("tokens"))
        return headers
