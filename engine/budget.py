"""The run's budget: one dollar and token cap shared by every engine of a run, like its ledger.

A `Budget` is made once per run over the run's `Ledger` and passed to each `Engine`
(`Engine(backend, config, ledger=ledger, budget=budget)`). Spending is what the ledger has
recorded (this session's answers and the earlier sessions carried over) plus what every engine
sharing the budget has in flight, counted at its most (prompt + max_tokens x n): so two engines
see each other's calls in flight, and together they stop at the cap, not a window of calls past
it.

The life of a call's cost:

- `reserve`: before a call is sent, its requests' estimated costs are reserved in order while
  spent + reserved is below the cap (the request that crosses it is the last one accepted);
  if one does not fit, the budget stops for good and every later request is refused.
- commit: when the call is answered, the engine records the real usage in the ledger, then
  `release`s the reservation, so the spend moves from "reserved" to "spent" without a gap;
- `release` alone, on a failure: the estimate is given back (a retry reserves it again).

A stopped budget is one name everywhere: `BudgetExhausted`, raised to the callers of every
engine sharing it, with the reason (`exhausted()`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from backends.errors import GpoError
from engine.ledger import Ledger

logger = logging.getLogger(__name__)


class BudgetExhausted(GpoError):
    """The run's dollar or token budget is spent; no new request is sent."""

    kind = "budget"


@dataclass(frozen=True, slots=True)
class Reservation:
    """The estimated cost of one call in flight, held until the call returns."""

    tokens: float = 0.0
    usd: float = 0.0


NO_RESERVATION = Reservation()


class Budget:
    """Caps on the spend `ledger` records (`usd`, `tokens`; None: no cap), shared by engines."""

    def __init__(
        self, ledger: Ledger, *, usd: float | None = None, tokens: int | None = None
    ) -> None:
        self.ledger = ledger
        self.usd = usd
        self.tokens = tokens
        self.reserved_tokens = 0.0
        self.reserved_usd = 0.0
        self._stopped: str | None = None

    @property
    def capped(self) -> bool:
        return self.usd is not None or self.tokens is not None

    def describe(self) -> dict[str, Any]:
        """The caps, as a run directory records them (`budget_tokens`, `budget_usd`)."""
        return {"budget_tokens": self.tokens, "budget_usd": self.usd}

    def exhausted(self) -> str | None:
        """Why no new request may be sent, or None while the budget allows it."""
        if self._stopped is not None:
            return self._stopped
        if self.tokens is not None and self.ledger.spent_tokens >= self.tokens:
            return f"token budget of {self.tokens} spent"
        if self.usd is not None and self.ledger.spent_usd() >= self.usd:
            return f"dollar budget of ${self.usd:g} spent"
        return None

    def check(self) -> None:
        """Raise `BudgetExhausted` when no new request may be sent."""
        reason = self.exhausted()
        if reason is not None:
            raise BudgetExhausted(reason)

    def reserve(
        self, model: str, estimates: Sequence[tuple[float, float]], in_flight: int = 0
    ) -> tuple[int, Reservation]:
        """How many of `estimates` ((prompt tokens, most completion tokens) per request, in
        order) may be sent, and their reservation. When not all fit, the budget stops for good
        (`in_flight`: the caller's requests in flight, for the log line)."""
        reason = self._stopped
        accepted = 0
        tokens = usd = 0.0
        if reason is None:
            spent_tokens = self.ledger.spent_tokens + self.reserved_tokens
            spent_usd = 0.0
            price = None
            if self.usd is not None:
                spent_usd = self.ledger.spent_usd() + self.reserved_usd
                price = self.ledger.prices.price(model)
            for prompt_tokens, completion_tokens in estimates:
                if self.tokens is not None and spent_tokens + tokens >= self.tokens:
                    reason = f"token budget of {self.tokens} reached"
                elif self.usd is not None and spent_usd + usd >= self.usd:
                    reason = f"dollar budget of ${self.usd:g} reached"
                if reason is not None:
                    break
                accepted += 1
                tokens += prompt_tokens + completion_tokens
                usd += price.token_cost(prompt_tokens, completion_tokens) if price else 0.0
        if reason is not None and self._stopped is None:
            self._stopped = reason
            logger.warning(
                "%s: no new request is sent; %d request(s) in flight are still counted",
                reason,
                in_flight,
            )
        self.reserved_tokens += tokens
        self.reserved_usd += usd
        return accepted, Reservation(tokens, usd)

    def release(self, reservation: Reservation) -> None:
        """Give back a call's reservation: after its usage is in the ledger (an answer), or
        without usage (a failure)."""
        self.reserved_tokens -= reservation.tokens
        self.reserved_usd -= reservation.usd
