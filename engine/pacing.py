"""How fast one engine's calls may go to its endpoint, and what the endpoint said back about it.

One `Pacing` per engine, used by generation and embedding calls alike:

- the concurrency window (AIMD, `rate_limits.AdaptiveWindow`), grown by answered calls and
  halved on a 429, or on a timeout while more than a quarter of it is left (a timeout is
  overload or a call the server dropped on the floor; the second is no reason to starve it);
- the client's own request and token rates (`rate_limits`), taken before each call
  (`admit`), the tokens of a call the server refused with 429 given back;
- the pause a 429's `Retry-After` imposes: no call is sent before the server's reset;
- when a call last got through (`last_success`), which tells an unreachable endpoint from a
  flapping one, and how many calls got through (`http_calls`).

Times are the running event loop's clock.
"""

from __future__ import annotations

import asyncio

from backends.errors import BackendError, RateLimited, RequestTimeout
from engine.rate_limits import AdaptiveWindow, RequestRateLimiter, TokenBucket


class Pacing:
    """The window, rates and pause of one endpoint; see the module docs."""

    def __init__(
        self,
        window: AdaptiveWindow,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        rate_window_s: float = 60.0,
    ) -> None:
        self.window = window
        self.rpm = (
            RequestRateLimiter(requests_per_minute, rate_window_s) if requests_per_minute else None
        )
        self.tpm = TokenBucket(tokens_per_minute, rate_window_s) if tokens_per_minute else None
        self.paused_until = 0.0
        self.last_success = float("-inf")
        self.http_calls = 0

    def pause_left(self) -> float:
        """Seconds until the server's `Retry-After` ends (0 or less: none)."""
        return self.paused_until - asyncio.get_running_loop().time()

    async def admit(self, tokens: float) -> None:
        """Wait until the client's request and token rates allow one call of `tokens`."""
        if self.rpm is not None:
            await self.rpm.acquire()
        if self.tpm is not None:
            await self.tpm.acquire(tokens)

    def give_back(self, tokens: float) -> None:
        """A call of `tokens` was refused with 429: the server did not count it."""
        if self.tpm is not None:
            self.tpm.give_back(tokens)

    def on_answer(self, sequences: int) -> float:
        """A call of `sequences` got through; returns the time it did."""
        self.last_success = asyncio.get_running_loop().time()
        self.http_calls += 1
        self.window.on_success(sequences)
        return self.last_success

    def on_congestion(self, error: BackendError) -> None:
        """Shrink the window on a 429, or on a timeout; pause all calls until `Retry-After`."""
        if isinstance(error, RateLimited):
            self.window.on_congestion()
            if error.retry_after is not None:
                # The server said when: no call is sent before then.
                until = asyncio.get_running_loop().time() + error.retry_after
                self.paused_until = max(self.paused_until, until)
        elif isinstance(error, RequestTimeout) and self.window.size > self.window.maximum // 4:
            self.window.on_congestion()
