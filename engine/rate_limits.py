"""Client-side limits: requests per minute, tokens per minute, and an adaptive concurrency window.

- Requests per minute use asyncio-throttle's sliding window (at most `rpm` calls in any 60 s).
- Tokens per minute use a token bucket: capacity `tpm`, refilled continuously at `tpm / 60` per
  second; a call takes its estimated tokens (prompt + max_tokens, as hosted APIs count them) and
  waits for the bucket to hold them. A call larger than the capacity waits for a full bucket.
- The concurrency window follows AIMD, as TCP does: +1 sequence per window's worth of successes,
  halved on a 429 or a timeout (at most once per `decrease_interval_s`, so one burst of errors
  from calls already in flight counts as one congestion signal), never below `minimum`.
"""

from __future__ import annotations

import asyncio
import time

from asyncio_throttle import Throttler


class RequestRateLimiter:
    """At most `per_minute` acquisitions in any sliding 60-second window."""

    def __init__(self, per_minute: float, window_s: float = 60.0) -> None:
        if per_minute <= 0:
            raise ValueError("requests per minute must be positive")
        self.per_minute = per_minute
        self._throttler = Throttler(rate_limit=max(1, int(per_minute)), period=window_s)

    async def acquire(self) -> None:
        async with self._throttler:
            pass


class TokenBucket:
    """Continuous-refill token bucket for tokens per minute."""

    def __init__(self, per_minute: float, window_s: float = 60.0) -> None:
        if per_minute <= 0:
            raise ValueError("tokens per minute must be positive")
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / window_s
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.refill_per_s)
        self._updated = now

    async def acquire(self, tokens: float) -> None:
        needed = min(float(tokens), self.capacity)
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= needed:
                    self._tokens -= needed
                    return
                await asyncio.sleep((needed - self._tokens) / self.refill_per_s)

    def give_back(self, tokens: float) -> None:
        """Return tokens for a call the server refused, which it did not count."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens + tokens)


class AdaptiveWindow:
    """The number of sequences allowed in flight, adjusted by AIMD."""

    def __init__(
        self,
        maximum: int,
        minimum: int = 1,
        adaptive: bool = True,
        decrease_interval_s: float = 1.0,
    ) -> None:
        self.maximum = max(1, maximum)
        self.minimum = max(1, min(minimum, self.maximum))
        self.adaptive = adaptive
        self.decrease_interval_s = decrease_interval_s
        self._size = float(self.maximum)
        self._last_decrease = -1e9
        self.decreases = 0

    @property
    def size(self) -> int:
        return int(self._size)

    def on_success(self, sequences: int, latency_s: float = 0.0, in_flight: int = 0) -> None:
        if self.adaptive and self._size < self.maximum:
            self._size = min(self.maximum, self._size + sequences / max(self._size, 1.0))

    def on_congestion(self) -> None:
        if not self.adaptive:
            return
        now = time.monotonic()
        if now - self._last_decrease < self.decrease_interval_s:
            return
        self._last_decrease = now
        self._size = max(float(self.minimum), self._size / 2)
        self.decreases += 1
