"""The endpoint pool: least-outstanding routing by capacity, cool-downs and half-open trials."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from backends.errors import (
    BackendError,
    ConfigError,
    ConnectionFailed,
    ContextLengthExceeded,
    RateLimited,
    ServerError,
)
from backends.protocol import Backend, Capabilities, Completion, Message, SamplingParams
from engine.endpoint_pool import EndpointPool

PARAMS = SamplingParams(max_tokens=4)
LEGACY = {"routing": "least-loaded", "resend": False}
"""The least-loaded routing and cool-down mechanics, each failure surfacing (no re-send)."""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeBackend:
    """Answers with its own name; calls wait on `gate` when it is set; `fail_with` raises."""

    def __init__(
        self,
        name: str,
        *,
        model: str = "m",
        capabilities: Capabilities | None = None,
        gated: bool = False,
    ) -> None:
        self.name = name
        self._model = model
        self._capabilities = capabilities or Capabilities(max_concurrency=None)
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.fail_with: BackendError | None = None
        self.calls = 0
        self.closed = False
        self.delay_s = 0.0

    @property
    def identity(self) -> str:
        return f"fake|{self.name}"

    @property
    def model(self) -> str:
        return self._model

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def _answer(self, count: int) -> list[Completion]:
        self.calls += 1
        await self.gate.wait()
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return [Completion((self.name,), 1, 1) for _ in range(count)]

    async def complete(self, prompts: Sequence[str], params: SamplingParams) -> list[Completion]:
        return await self._answer(len(prompts))

    async def chat(self, messages: Sequence[Message], params: SamplingParams) -> Completion:
        return (await self._answer(1))[0]

    async def close(self) -> None:
        self.closed = True


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def outstanding(pool: EndpointPool) -> list[int]:
    return [status.outstanding_sequences for status in pool.status()]


def test_fake_backend_satisfies_the_protocol() -> None:
    assert isinstance(FakeBackend("a"), Backend)


async def test_calls_go_to_the_least_loaded_endpoint_in_turns() -> None:
    a, b = FakeBackend("a", gated=True), FakeBackend("b", gated=True)
    pool = EndpointPool([a, b], **LEGACY)
    tasks = [asyncio.create_task(pool.complete(["p"], PARAMS))]
    await settle()
    tasks.append(asyncio.create_task(pool.complete(["p"], PARAMS)))
    await settle()
    assert outstanding(pool) == [1, 1]
    tasks.append(asyncio.create_task(pool.complete(["p1", "p2", "p3", "p4"], PARAMS)))
    await settle()
    assert outstanding(pool) == [5, 1], "the tie goes to the endpoint chosen least recently"
    tasks.append(asyncio.create_task(pool.chat([("user", "hi")], SamplingParams(n=3))))
    await settle()
    assert outstanding(pool) == [5, 4], "a chat with n=3 is three sequences"
    a.gate.set()
    b.gate.set()
    results = await asyncio.gather(*tasks)
    assert [r.text for r in results[0]] == ["a"]
    assert [r.text for r in results[2]] == ["a"] * 4
    assert results[3].text == "b"
    assert outstanding(pool) == [0, 0]


async def test_load_is_weighed_by_each_endpoint_capacity() -> None:
    big = FakeBackend("big", capabilities=Capabilities(max_concurrency=8), gated=True)
    small = FakeBackend("small", capabilities=Capabilities(max_concurrency=2), gated=True)
    pool = EndpointPool([big, small], **LEGACY)
    assert pool.capabilities.max_concurrency == 10
    tasks = []
    for _ in range(10):
        tasks.append(asyncio.create_task(pool.complete(["p"], PARAMS)))
        await settle()
    assert outstanding(pool) == [8, 2]
    big.gate.set()
    small.gate.set()
    await asyncio.gather(*tasks)


async def test_a_failing_endpoint_is_dropped_for_the_cool_down() -> None:
    clock = FakeClock()
    a, b = FakeBackend("a"), FakeBackend("b")
    a.fail_with = ServerError("HTTP 503", endpoint="a", status=503)
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=30.0, clock=clock)
    with pytest.raises(ServerError):
        await pool.complete(["p"], PARAMS)
    assert pool.status()[0].cooldown_left_s == pytest.approx(30.0)
    for _ in range(4):
        assert (await pool.complete(["p"], PARAMS))[0].text == "b"
    assert a.calls == 1
    clock.now += 31
    a.fail_with = None
    answers = {(await pool.complete(["p"], PARAMS))[0].text for _ in range(4)}
    assert answers == {"a", "b"}, "after the cool-down the endpoint takes work again"
    assert pool.status()[0].consecutive_failures == 0


async def test_a_recovering_endpoint_gets_one_trial_call_at_a_time() -> None:
    clock = FakeClock()
    a, b = FakeBackend("a"), FakeBackend("b", gated=True)
    a.fail_with = ConnectionFailed("refused", endpoint="a")
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=10.0, clock=clock)
    with pytest.raises(ConnectionFailed):
        await pool.complete(["p"], PARAMS)
    clock.now += 11
    a.fail_with = None
    a.gate.clear()
    tasks = []
    for _ in range(4):
        tasks.append(asyncio.create_task(pool.complete(["p"], PARAMS)))
        await settle()
    assert outstanding(pool) == [1, 3], "half-open: one trial call, the rest elsewhere"
    a.gate.set()
    b.gate.set()
    await asyncio.gather(*tasks)
    assert pool.status()[0].consecutive_failures == 0


async def test_a_failed_trial_doubles_the_cool_down_up_to_the_cap() -> None:
    clock = FakeClock()
    a, b = FakeBackend("a"), FakeBackend("b")
    a.fail_with = ServerError("HTTP 500", endpoint="a", status=500)
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=10.0, max_cooldown_s=25.0, clock=clock)
    expected = [10.0, 20.0, 25.0]
    for cool_down in expected:
        with pytest.raises(ServerError):
            while True:  # `b` answers until the turn of the recovered `a` comes
                await pool.complete(["p"], PARAMS)
        assert pool.status()[0].cooldown_left_s == pytest.approx(cool_down)
        clock.now += cool_down + 1


async def test_calls_in_flight_when_dropped_do_not_lengthen_the_cool_down() -> None:
    clock = FakeClock()
    a, b = FakeBackend("a", gated=True), FakeBackend("b", gated=True)
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=10.0, clock=clock)
    tasks = []
    for _ in range(6):
        tasks.append(asyncio.create_task(pool.complete(["p"], PARAMS)))
        await settle()
    assert outstanding(pool) == [3, 3]
    a.fail_with = ServerError("HTTP 502", endpoint="a", status=502)
    a.gate.set()
    b.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert sum(isinstance(r, ServerError) for r in results) == 3
    status = pool.status()[0]
    assert status.failures == 3
    assert status.consecutive_failures == 1
    assert status.cooldown_left_s == pytest.approx(10.0)


async def test_errors_that_are_the_request_fault_keep_the_endpoint() -> None:
    a, b = FakeBackend("a"), FakeBackend("b")
    a.fail_with = ContextLengthExceeded("prompt too long", endpoint="a", status=400)
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=10.0, clock=FakeClock())
    with pytest.raises(ContextLengthExceeded):
        await pool.complete(["p"], PARAMS)
    status = pool.status()[0]
    assert status.cooldown_left_s == 0.0 and status.failures == 0


async def test_rate_limited_endpoint_pauses_for_retry_after() -> None:
    clock = FakeClock()
    a, b = FakeBackend("a"), FakeBackend("b")
    a.fail_with = RateLimited("slow down", endpoint="a", retry_after=4.0)
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=30.0, clock=clock)
    with pytest.raises(RateLimited):
        await pool.complete(["p"], PARAMS)
    assert pool.status()[0].cooldown_left_s == pytest.approx(4.0)
    assert pool.status()[0].consecutive_failures == 0


async def test_when_every_endpoint_cools_down_the_first_to_recover_is_used() -> None:
    clock = FakeClock()
    a, b = FakeBackend("a"), FakeBackend("b")
    pool = EndpointPool([a, b], **LEGACY, cooldown_s=10.0, clock=clock)
    b.fail_with = ServerError("down", endpoint="b", status=500)
    a.fail_with = ServerError("down", endpoint="a", status=500)
    with pytest.raises(ServerError):
        await pool.complete(["p"], PARAMS)  # a, dropped until 1010
    clock.now += 5
    with pytest.raises(ServerError):
        await pool.complete(["p"], PARAMS)  # b, dropped until 1015
    a.fail_with = None
    b.fail_with = None
    assert (await pool.complete(["p"], PARAMS))[0].text == "a"


def test_pool_values_and_validation() -> None:
    a = FakeBackend("a", capabilities=Capabilities(prompt_lists=True, max_concurrency=4))
    b = FakeBackend("b", capabilities=Capabilities(prompt_lists=False, max_concurrency=None))
    assert EndpointPool([a]).identity == "fake|a"
    assert EndpointPool([b, a]).identity == "pool[fake|a,fake|b]"
    assert EndpointPool([a, b], identity="scorer").identity == "scorer"
    combined = EndpointPool([a, b]).capabilities
    assert not combined.prompt_lists
    assert combined.max_concurrency is None
    assert EndpointPool([a, b]).model == "m"
    with pytest.raises(ConfigError, match="at least one endpoint"):
        EndpointPool([])
    with pytest.raises(ConfigError, match="must serve one model"):
        EndpointPool([a, FakeBackend("c", model="other")])
    with pytest.raises(ConfigError, match="failures_before_cooldown"):
        EndpointPool([a], failures_before_cooldown=0)


async def test_close_closes_every_endpoint() -> None:
    a, b = FakeBackend("a"), FakeBackend("b")
    await EndpointPool([a, b]).close()
    assert a.closed and b.closed


async def test_many_concurrent_calls_balance_and_leave_nothing_outstanding() -> None:
    rng = random.Random(7)
    backends = [FakeBackend(name) for name in "abc"]
    pool = EndpointPool(backends, **LEGACY)

    async def one(i: int) -> str:
        backends[i % 3].delay_s = rng.uniform(0.0, 0.003)
        return (await pool.complete([f"p{i}"], PARAMS))[0].text

    answers = await asyncio.gather(*(one(i) for i in range(300)))
    assert outstanding(pool) == [0, 0, 0]
    counts = {name: answers.count(name) for name in "abc"}
    assert sum(counts.values()) == 300
    assert min(counts.values()) >= 50, counts
