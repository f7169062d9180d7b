"""One budget for a run: engines that share a `Budget` see each other's calls in flight, so
together they stop at its cap; reservations are released when calls return (answered or
failed); a spent budget stops every engine sharing it with `BudgetExhausted`.

A fake in-process backend holds its calls at a gate, so "in flight" is a state the test
controls; waits are bounded loops over event-loop turns, never wall time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from backends.errors import ConfigError, ServerError
from backends.protocol import Capabilities, Completion, Message, Request, SamplingParams
from engine.budget import Budget, BudgetExhausted, Reservation
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable

PROMPT_TOKENS = 10  # a 40-character prompt, as the engine estimates it (chars / 4)
MAX_TOKENS = 10
PER_REQUEST = PROMPT_TOKENS + MAX_TOKENS  # the estimate reserved per request


class GatedBackend:
    """Answers each prompt with PROMPT_TOKENS + MAX_TOKENS tokens once `gate` is open."""

    def __init__(self, model: str, gate: asyncio.Event, *, fail: bool = False) -> None:
        self._model = model
        self.gate = gate
        self.fail = fail
        self.received = 0  # prompts that reached the backend

    @property
    def identity(self) -> str:
        return f"fake://{self._model}"

    @property
    def model(self) -> str:
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(max_concurrency=64)

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        self.received += len(prompts)
        await self.gate.wait()
        if self.fail:
            raise ServerError("boom")
        return [Completion(("ok",), PROMPT_TOKENS, MAX_TOKENS, ("length",)) for _ in prompts]

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def request(engine_name: str, i: int) -> Request:
    text = f"{engine_name}-{i}".ljust(4 * PROMPT_TOKENS, ".")
    return Request(prompt=text, params=SamplingParams(max_tokens=MAX_TOKENS))


async def until(condition: Callable[[], bool], turns: int = 100_000) -> None:
    """Let the event loop run until `condition` holds (bounded by loop turns, not time)."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def engine_for(backend: GatedBackend, ledger: Ledger, budget: Budget, **config) -> Engine:
    settings = {"max_batch_size": 1, "share_cache_claims": False, **config}
    return Engine(backend, EngineConfig(**settings), ledger=ledger, budget=budget)


@contextlib.asynccontextmanager
async def running(*engines: Engine, gate: asyncio.Event) -> AsyncIterator[None]:
    """The engines, started; the gate is opened before they close, so a failed assertion
    never leaves a call waiting at it (closing waits for calls in flight)."""
    async with contextlib.AsyncExitStack() as stack:
        for engine in engines:
            await stack.enter_async_context(engine)
        try:
            yield
        finally:
            gate.set()


async def outcome(engine: Engine, req: Request) -> Completion | Exception:
    try:
        return await engine.generate(req)
    except (BudgetExhausted, RequestFailed) as stop:
        return stop


async def test_two_engines_sharing_a_budget_see_each_others_calls_in_flight() -> None:
    gate = asyncio.Event()
    ledger = Ledger()
    cap = 5 * PER_REQUEST
    budget = Budget(ledger, tokens=cap)
    backends = [GatedBackend("scorer", gate), GatedBackend("optimizer", gate)]
    engines = [engine_for(backend, ledger, budget) for backend in backends]
    async with running(*engines, gate=gate):
        tasks = [
            asyncio.ensure_future(outcome(engine, request(engine.backend.model, i)))
            for i in range(8)
            for engine in engines
        ]
        # Every request is either in flight at the backend or refused by the budget.
        await until(lambda: sum(b.received for b in backends) + sum(t.done() for t in tasks) == 16)
        in_flight = sum(b.received for b in backends)
        assert in_flight == 5  # not 5 per engine: each saw the other's reservations
        assert budget.reserved_tokens == pytest.approx(cap)
        assert all(engine.budget_exhausted() for engine in engines)  # one stop for both
        gate.set()
        results = await asyncio.gather(*tasks)
    answered = [r for r in results if isinstance(r, Completion)]
    refused = [r for r in results if isinstance(r, BudgetExhausted)]
    assert len(answered) == 5 and len(refused) == 11
    assert ledger.spent_tokens == 5 * PER_REQUEST <= cap
    assert budget.reserved_tokens == pytest.approx(0.0)  # answers moved to "spent"


async def test_a_dollar_cap_counts_every_engines_reservations_at_its_own_price() -> None:
    gate = asyncio.Event()
    prices = PriceTable(
        {
            "cheap": ModelPrice(input_per_mtok=1e6, output_per_mtok=1e6),  # $1 per token
            "dear": ModelPrice(input_per_mtok=3e6, output_per_mtok=3e6),  # $3 per token
        }
    )
    ledger = Ledger(prices)
    budget = Budget(ledger, usd=100.0)
    cheap, dear = GatedBackend("cheap", gate), GatedBackend("dear", gate)
    engines = [engine_for(cheap, ledger, budget), engine_for(dear, ledger, budget)]
    async with running(*engines, gate=gate):
        # The dear engine first: one request reserves $60; the cheap one then has room for two
        # requests of $20 ($60 + $20 < $100, then $80 + $20 reaches the cap).
        first = asyncio.ensure_future(outcome(engines[1], request("dear", 0)))
        await until(lambda: dear.received == 1)
        assert budget.reserved_usd == pytest.approx(3 * PER_REQUEST)
        rest = [asyncio.ensure_future(outcome(engines[0], request("cheap", i))) for i in range(4)]
        await until(lambda: cheap.received + sum(t.done() for t in rest) == 4)
        assert cheap.received == 2
        gate.set()
        results = await asyncio.gather(first, *rest)
    assert sum(isinstance(r, Completion) for r in results) == 3
    assert ledger.spent_usd() == pytest.approx(100.0)
    assert budget.reserved_usd == pytest.approx(0.0)


async def test_failed_calls_give_their_reservation_back() -> None:
    gate = asyncio.Event()
    ledger = Ledger()
    budget = Budget(ledger, tokens=10 * PER_REQUEST)
    backend = GatedBackend("flaky", gate, fail=True)
    engine = engine_for(backend, ledger, budget, max_retries=0)
    async with running(engine, gate=gate):
        tasks = [asyncio.ensure_future(outcome(engine, request("flaky", i))) for i in range(3)]
        await until(lambda: backend.received == 3)
        assert budget.reserved_tokens == pytest.approx(3 * PER_REQUEST)
        gate.set()
        results = await asyncio.gather(*tasks)
    assert all(isinstance(r, RequestFailed) for r in results)
    assert budget.reserved_tokens == pytest.approx(0.0)
    assert budget.exhausted() is None  # nothing was spent


def test_reserve_accepts_until_the_cap_is_reached_and_then_stops_for_good() -> None:
    ledger = Ledger()
    budget = Budget(ledger, tokens=50)
    accepted, held = budget.reserve("m", [(10.0, 10.0)] * 2)
    assert (accepted, held) == (2, Reservation(40.0, 0.0))
    # 40 reserved: the next request (40 < 50) is the last, crossing the cap.
    accepted, last = budget.reserve("m", [(10.0, 10.0)] * 3)
    assert accepted == 1
    assert "token budget of 50" in (budget.exhausted() or "")
    budget.release(held)
    budget.release(last)
    assert budget.reserve("m", [(1.0, 1.0)])[0] == 0  # stopped for good
    with pytest.raises(BudgetExhausted):
        budget.check()


def test_a_budget_is_spent_by_what_its_ledger_carries_over() -> None:
    ledger = Ledger()
    budget = Budget(ledger, tokens=100)
    assert budget.exhausted() is None and Budget(ledger).capped is False
    ledger.carry_over(100, 0.0)
    assert budget.exhausted() == "token budget of 100 spent"


def test_an_engine_refuses_a_budget_over_another_ledger() -> None:
    gate = asyncio.Event()
    with pytest.raises(ConfigError, match="same ledger"):
        Engine(GatedBackend("m", gate), ledger=Ledger(), budget=Budget(Ledger(), tokens=1))
    budget = Budget(Ledger(), tokens=1)
    assert Engine(GatedBackend("m", gate), budget=budget).ledger is budget.ledger
