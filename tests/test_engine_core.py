"""The engine against a scripted loopback server: batching, de-duplication, cache, retries,
failure isolation, priorities, budgets and the ledger."""

from __future__ import annotations

import asyncio
import multiprocessing

import pytest
from aiohttp import web

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Request, SamplingParams
from engine.budget import Budget
from engine.cache import ResponseCache
from engine.engine import BudgetExhausted, Engine, EngineConfig, Priority, RequestFailed
from engine.ledger import Ledger
from tests.scripted_server import ScriptedServer
from tests.waiting import DEADLINE_S, wait_until_async


@pytest.fixture
async def server():
    scripted = ScriptedServer()
    await scripted.start()
    yield scripted
    await scripted.stop()


def make_engine(server, cache=None, budget_tokens=None, **config):
    backend = OpenAICompatibleBackend(
        server.url, "scripted-model", capabilities=Capabilities(max_concurrency=None)
    )
    defaults = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}
    defaults.update(config)
    budget = Budget(Ledger(), tokens=budget_tokens) if budget_tokens is not None else None
    return Engine(backend, EngineConfig(**defaults), cache=cache, budget=budget)


def prompt(i: int) -> Request:
    return Request(prompt=f"p{i}", params=SamplingParams(max_tokens=8))


async def test_many_requests_ride_prompt_lists_and_answer_correctly(server):
    async with make_engine(server, max_batch_size=16) as engine:
        results = await engine.generate_many([prompt(i) for i in range(500)])
    assert [r.text for r in results] == [f"echo:p{i}" for i in range(500)]
    assert len(server.bodies) < 500 / 4  # far fewer calls than requests
    assert all(len(b["prompt"]) <= 16 for b in server.bodies if isinstance(b["prompt"], list))
    totals = engine.ledger.snapshot()["totals"]
    assert totals["requests"] == 500
    assert totals["prompt_tokens"] == sum(len(f"p{i}") for i in range(500))


async def test_identical_requests_in_flight_are_sent_once(server):
    async with make_engine(server) as engine:
        results = await asyncio.gather(*(engine.generate(prompt(7)) for _ in range(20)))
    assert {r.text for r in results} == {"echo:p7"}
    assert sum(len(b["prompt"]) if isinstance(b["prompt"], list) else 1 for b in server.bodies) == 1
    assert engine.ledger.snapshot()["totals"]["deduplicated"] == 19


async def test_second_run_is_served_from_cache_at_zero_cost(server, tmp_path):
    cache_path = tmp_path / "cache.sqlite"
    async with make_engine(server, ResponseCache(cache_path)) as engine:
        first = await engine.generate_many([prompt(i) for i in range(200)])
    calls_after_first = len(server.bodies)
    async with make_engine(server, ResponseCache(cache_path)) as engine:
        second = await engine.generate_many([prompt(i) for i in range(200)])
    assert len(server.bodies) == calls_after_first
    assert [r.text for r in first] == [r.text for r in second]
    assert all(r.cached for r in second)
    totals = engine.ledger.snapshot()["totals"]
    assert totals["requests"] == 0 and totals["total_tokens"] == 0
    assert totals["cache_hits"] == 200 and totals["saved_tokens"] > 0


async def test_sampled_requests_are_cached_only_with_a_sample_index(server, tmp_path):
    sampled = SamplingParams(temperature=1.0)
    async with make_engine(server, ResponseCache(tmp_path / "c.sqlite")) as engine:
        await engine.generate(Request(prompt="s", params=sampled))
        await engine.generate(Request(prompt="s", params=sampled))
        await engine.generate(Request(prompt="s", params=sampled, sample_index=0))
        await engine.generate(Request(prompt="s", params=sampled, sample_index=0))
        await engine.generate(Request(prompt="s", params=sampled, sample_index=1))
    assert len(server.bodies) == 4


async def test_transient_errors_are_retried_and_retry_after_honoured(server):
    server.script.append(lambda _: web.Response(status=503))
    server.script.append(lambda _: web.Response(status=429, headers={"Retry-After": "0.2"}))
    async with make_engine(server) as engine:
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await engine.generate(prompt(1))
        elapsed = loop.time() - started
    assert answer.text == "echo:p1"
    assert elapsed >= 0.2  # the 429's Retry-After was waited out
    snapshot = engine.ledger.snapshot()["totals"]
    assert snapshot["retries"] == 2 and snapshot["rate_limited"] == 1
    assert snapshot["failures"] == 0


async def test_retries_are_bounded_and_failure_says_why(server):
    for _ in range(10):
        server.script.append(lambda _: web.Response(status=500, text="boom"))
    async with make_engine(server, max_retries=3) as engine:
        with pytest.raises(RequestFailed) as caught:
            await engine.generate(prompt(1))
    assert caught.value.kind == "server_error" and caught.value.attempts == 4
    assert "500" in caught.value.reason
    assert len(server.bodies) == 4


async def test_one_invalid_prompt_does_not_sink_its_batch(server):
    def refuse_bad(body):
        prompts = body["prompt"] if isinstance(body["prompt"], list) else [body["prompt"]]
        if "bad" in prompts:
            return web.json_response(
                {"error": {"message": "maximum context length exceeded"}}, status=400
            )
        return None

    for _ in range(40):
        server.script.append(refuse_bad)
    requests = [prompt(i) for i in range(10)]
    requests.insert(5, Request(prompt="bad", params=SamplingParams(max_tokens=8)))
    async with make_engine(server) as engine:
        results = await engine.generate_many(requests)
    failed = [r for r in results if isinstance(r, RequestFailed)]
    assert len(failed) == 1 and failed[0].kind == "context_length" and failed[0].attempts == 1
    assert [r.text for r in results if not isinstance(r, RequestFailed)] == [
        f"echo:p{i}" for i in range(10)
    ]


async def test_optimizer_priority_goes_before_queued_scoring(server):
    gate = asyncio.Event()
    arrived = asyncio.Event()

    async def held(body):
        arrived.set()
        await gate.wait()

    server.script.append(held)
    async with make_engine(server, max_concurrency=1, max_batch_size=1) as engine:
        blocker = asyncio.ensure_future(engine.generate(prompt(0)))
        await asyncio.wait_for(arrived.wait(), DEADLINE_S)  # the only slot is taken
        scoring = [asyncio.ensure_future(engine.generate(prompt(i))) for i in range(1, 4)]
        assert await wait_until_async(lambda: engine.queued == 3)
        optimizer = asyncio.ensure_future(
            engine.generate(
                Request(prompt="opt", params=SamplingParams(max_tokens=8)),
                priority=Priority.OPTIMIZER,
                phase="optimizing",
            )
        )
        assert await wait_until_async(lambda: engine.queued == 4)  # queued after the scoring
        gate.set()
        await asyncio.gather(blocker, optimizer, *scoring)
    sent = [b["prompt"] for b in server.bodies]
    assert sent[1] == "opt"
    rows = {row["phase"] for row in engine.ledger.snapshot()["rows"]}
    assert rows == {"scoring", "optimizing"}


async def test_token_budget_stops_new_requests(server):
    async with make_engine(server, budget_tokens=50, max_concurrency=1) as engine:
        outcomes = []
        for i in range(30):
            try:
                outcomes.append(await engine.generate(prompt(i)))
            except BudgetExhausted as stop:
                outcomes.append(stop)
                break
    assert isinstance(outcomes[-1], BudgetExhausted)
    assert engine.ledger.spent_tokens >= 50
    assert len(outcomes) < 30


async def test_chat_rendered_with_a_template_rides_prompt_lists(server):
    async with make_engine(server, chat_template="chatml") as engine:
        requests = [Request(messages=(("user", f"q{i}"),)) for i in range(40)]
        results = await engine.generate_many(requests)
    assert all(b.get("prompt") is not None for b in server.bodies)
    assert results[3].text.startswith("echo:<|im_start|>user\nq3<|im_end|>")


def _write_cache(path: str, start: int) -> None:
    from backends.protocol import Completion

    cache = ResponseCache(path)
    for i in range(start, start + 300):
        cache.put_many([(f"k{i}".encode(), Completion((f"t{i}",), 1, 1))])
    cache.close()


def test_two_processes_write_one_cache_file(tmp_path):
    path = str(tmp_path / "shared.sqlite")
    ResponseCache(path).close()
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_cache, args=(path, s)) for s in (0, 150)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(DEADLINE_S)
    assert [w.exitcode for w in workers] == [0, 0]
    cache = ResponseCache(path)
    assert len(cache) == 450
    assert cache.get(b"k200").texts == ("t200",)


def test_corrupt_cache_file_is_set_aside(tmp_path):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"damaged page " * 100)  # a cache, damaged
    cache = ResponseCache(path)
    assert cache.set_aside is not None and cache.set_aside.exists()
    assert len(cache) == 0
