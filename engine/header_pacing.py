"""Pacing from the server's own rate-limit headers: a mirror of each of its budgets.

A hosted API says on every answer how much of each budget (requests, tokens) is left and when
the budget is whole again (`engine.ratelimit_headers`). `ServerBudget` keeps a mirror of one such
budget and says how long a call of a given cost must wait so that it fits:

- An answer's headers describe the budget just after the server admitted that call, that is at
  about the time the call was *sent*, not when its answer came back. The mirror therefore
  remembers, per call, its send time t0 and the client's running spend S0 just after it, and
  estimates the level now as

      level(now) = min(C, R0 + r (now - t0)) - (S(now) - S0)

  where R0 is the reported remaining, r the refill rate, C the capacity and S the units the
  client has sent since (calls in flight that the server already debited or soon will). Of the
  answers that come back, the one sent last wins (it has seen the most debits).
- r and C are estimated from the headers themselves: for a budget that refills continuously
  and reports the time until it is full, remaining = C - r x reset, so a least-squares line of
  remaining against reset over every answer gives r (minus the slope) and C (the intercept,
  plus half a unit: remaining is rounded down). Until that fit exists (fewer than 3 points, or
  all resets alike), the configured client limits give r and C when there are some; without
  either, a budget that is short waits for its reported reset, so that the remaining budget
  lasts until the reset.
- A call of cost c waits (c + r x 25 ms - level) / r seconds (the 25 ms absorb calls that reach
  the server a little early or out of order), or until the reset without a rate; then its cost
  is spent from the mirror before it is sent.

Only servers that send the headers are paced this way; with none, nothing here waits and the
client buckets (if configured) and the 429 pause pace alone.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping

from engine.ratelimit_headers import LimitReading, read_rate_limits

ARRIVAL_SLACK_S = 0.025
"""A call waits until the budget holds its cost plus this long's refill: calls reach the server
a few milliseconds apart from when they left, and out of order. A constant lead costs no rate:
the sends shift once by it, then follow the refill."""
_MIN_FIT_POINTS = 3
_MIN_RESET_SPREAD_S = 1e-3

CALL_MARK: contextvars.ContextVar[tuple[float, float, float] | None] = contextvars.ContextVar(
    "gpo_call_mark", default=None
)
"""(send time, request spend, token spend) just after the current call was admitted; set
before the call's task is created, so the task (and the transport inside it) inherits it."""


class ServerBudget:
    """A mirror of one server budget; see the module docs. Times are one monotonic clock."""

    def __init__(self, rate_per_s: float | None = None, capacity: float | None = None) -> None:
        self.configured = (rate_per_s, capacity) if rate_per_s and capacity else None
        self.spent = 0.0
        self._observed: tuple[float, float, float, float | None] | None = None
        """(send time t0, spend S0, remaining R0, reset seconds) of the freshest answer."""
        self._fit = [0, 0.0, 0.0, 0.0, 0.0]  # n, sum x, sum y, sum xx, sum xy (x reset, y left)

    @property
    def active(self) -> bool:
        """True once the server has described this budget."""
        return self._observed is not None

    def observe(self, reading: LimitReading, sent_at: float, spent_after: float) -> None:
        """An answer to a call sent at `sent_at` (the spend then `spent_after`) says `reading`."""
        if reading.reset_s is not None:
            x, y = reading.reset_s, reading.remaining
            fit = self._fit
            fit[0] += 1
            fit[1] += x
            fit[2] += y
            fit[3] += x * x
            fit[4] += x * y
        if self._observed is None or spent_after >= self._observed[1]:
            self._observed = (sent_at, spent_after, reading.remaining, reading.reset_s)

    def rate_and_capacity(self) -> tuple[float, float] | None:
        """(refill per second, capacity): fitted from the headers, else configured."""
        n, sx, sy, sxx, sxy = self._fit
        spread = n * sxx - sx * sx
        if n >= _MIN_FIT_POINTS and spread > (_MIN_RESET_SPREAD_S**2) * n * n:
            slope = (n * sxy - sx * sy) / spread
            if slope < 0:
                return -slope, (sy - slope * sx) / n + 0.5
        return self.configured

    def wait_s(self, cost: float, now: float) -> float:
        """Seconds until a call of `cost` fits (0: now)."""
        if self._observed is None:
            return 0.0
        sent_at, spent_then, remaining, reset_s = self._observed
        in_flight = self.spent - spent_then
        model = self.rate_and_capacity()
        if model is None:
            level = remaining - in_flight
            if level >= min(cost, max(remaining, 1.0)):
                return 0.0
            return max(0.0, sent_at + (reset_s or 0.0) - now)
        rate, capacity = model
        need = min(cost + rate * ARRIVAL_SLACK_S, capacity)
        level = min(capacity, remaining + rate * (now - sent_at)) - in_flight
        return 0.0 if level >= need else (need - level) / rate


class HeaderPacing:
    """The request and token budgets a server reports, fed by its answers' headers."""

    def __init__(
        self,
        request_rate: tuple[float, float] | None = None,
        token_rate: tuple[float, float] | None = None,
    ) -> None:
        self.requests = ServerBudget(*(request_rate or (None, None)))
        self.tokens = ServerBudget(*(token_rate or (None, None)))

    @property
    def active(self) -> bool:
        return self.requests.active or self.tokens.active

    def wait_s(self, tokens: float, now: float) -> float:
        """Seconds until one call of `tokens` fits both budgets."""
        if not self.active:
            return 0.0
        return max(self.requests.wait_s(1.0, now), self.tokens.wait_s(tokens, now))

    def spend(self, tokens: float, now: float) -> None:
        """One call of `tokens` is sent now; it is the current context's call from here on."""
        self.requests.spent += 1.0
        self.tokens.spent += tokens
        CALL_MARK.set((now, self.requests.spent, self.tokens.spent))

    def on_headers(self, headers: Mapping[str, str], now: float) -> None:
        """An answer's rate-limit headers, read in the task of the call they answer."""
        report = read_rate_limits(headers, time.time())
        mark = CALL_MARK.get()
        sent_at, requests_then, tokens_then = mark or (now, self.requests.spent, self.tokens.spent)
        if report.requests is not None:
            self.requests.observe(report.requests, sent_at, requests_then)
        if report.tokens is not None:
            self.tokens.observe(report.tokens, sent_at, tokens_then)
