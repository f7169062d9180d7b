"""How fast one engine's calls may go to its endpoint, and what the endpoint said back about it.

One `Pacing` per engine, used by generation and embedding calls alike:

- the concurrency window (AIMD, `rate_limits.AdaptiveWindow`), grown by answered calls and
  halved on a 429, or on a timeout while more than a quarter of it is left (a timeout is
  overload or a call the server dropped on the floor; the second is no reason to starve it);
- the server's own budgets, mirrored from the rate-limit headers of its answers
  (`header_pacing`): once a server sends them, each call waits until it fits what the server
  says is left, and a 429 no longer shrinks the window (the rate, not the concurrency, is
  what is short);
- the client's own request and token rates (`rate_limits`), the fallback for servers that send
  no such headers, taken before each call (`admit`), the tokens of a call the server refused
  with 429 given back;
- the pause a 429's `Retry-After` imposes: no call is sent before the server's reset;
- when a call last got through (`last_success`), which tells an unreachable endpoint from a
  flapping one, and how many calls got through (`http_calls`).

Times are the running event loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from backends.errors import BackendError, RateLimited, RequestTimeout
from engine.header_pacing import HeaderPacing
from engine.rate_limits import RequestRateLimiter, TokenBucket

_MAX_HEADER_WAITS = 10_000


class Window(Protocol):
    """The concurrency window: a fixed or AIMD one (`rate_limits.AdaptiveWindow`) or one found
    by measurement (`adaptive_window.MeasuredWindow`)."""

    maximum: int

    @property
    def size(self) -> int: ...

    def on_success(self, sequences: int, latency_s: float = 0.0, in_flight: int = 0) -> None: ...

    def on_congestion(self) -> None: ...


class Pacing:
    """The window, rates and pause of one endpoint; see the module docs."""

    def __init__(
        self,
        window: Window,
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
        self.server = HeaderPacing(
            (requests_per_minute / rate_window_s, requests_per_minute)
            if requests_per_minute
            else None,
            (tokens_per_minute / rate_window_s, tokens_per_minute) if tokens_per_minute else None,
        )
        self.paused_until = 0.0
        self.last_success = float("-inf")
        self.http_calls = 0

    @property
    def counts_tokens(self) -> bool:
        """True when calls' token estimates matter: a client token rate, or a server's."""
        return self.tpm is not None or self.server.active

    def pause_left(self) -> float:
        """Seconds until the server's `Retry-After` ends (0 or less: none)."""
        return self.paused_until - asyncio.get_running_loop().time()

    async def admit(self, tokens: float) -> None:
        """Wait until the server's budgets (from its headers), or else the client's request
        and token rates, allow one call of `tokens`."""
        loop = asyncio.get_running_loop()
        if self.server.active:
            for _ in range(_MAX_HEADER_WAITS):
                wait = self.server.wait_s(tokens, loop.time())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        else:
            if self.rpm is not None:
                await self.rpm.acquire()
            if self.tpm is not None:
                await self.tpm.acquire(tokens)
        self.server.spend(tokens, loop.time())

    def on_headers(self, headers: Mapping[str, str]) -> None:
        """An answer's rate-limit headers (called by the transport, in the call's task)."""
        self.server.on_headers(headers, asyncio.get_running_loop().time())

    def give_back(self, tokens: float) -> None:
        """A call of `tokens` was refused with 429: the server did not count it."""
        if self.tpm is not None:
            self.tpm.give_back(tokens)

    def on_answer(self, sequences: int, started: float | None = None, in_flight: int = 0) -> float:
        """A call of `sequences`, sent at `started` while `in_flight` sequences were out, got
        through; returns the time it did."""
        self.last_success = asyncio.get_running_loop().time()
        self.http_calls += 1
        latency = self.last_success - started if started is not None else 0.0
        self.window.on_success(sequences, latency, in_flight)
        return self.last_success

    def on_congestion(self, error: BackendError) -> None:
        """Shrink the window on a 429, or on a timeout; pause all calls until `Retry-After`."""
        if isinstance(error, RateLimited):
            if not self.server.active:
                self.window.on_congestion()
            if error.retry_after is not None:
                # The server said when: no call is sent before then.
                until = asyncio.get_running_loop().time() + error.retry_after
                self.paused_until = max(self.paused_until, until)
        elif isinstance(error, RequestTimeout) and self.window.size > self.window.maximum // 4:
            self.window.on_congestion()
