"""The engine against the simulated vLLM server: volume, de-duplication, cache, 429 storms and
every injected fault kind, end to end over real loopback HTTP."""

from __future__ import annotations

import aiohttp
import pytest

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from backends.simulated.config import FaultRates, RateLimits
from backends.simulated.metrics import metric_total, parse_prometheus
from engine.cache import ResponseCache
from engine.engine import Engine, EngineConfig, RequestFailed

MODEL = "simulated-llama-2-7b-chat"
PARAMS = SamplingParams(max_tokens=16)


async def served_sequences(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        samples = parse_prometheus(await response.text())
    return metric_total(samples, "sim_sequences_served_total")


async def rate_limited_answers(url: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        samples = parse_prometheus(await response.text())
    return metric_total(samples, "sim_rate_limited_total")


def engine_for(url: str, cache: ResponseCache | None = None, **config) -> Engine:
    backend = OpenAICompatibleBackend(
        f"{url}/v1", MODEL, capabilities=Capabilities(max_concurrency=256), request_timeout_s=2.0
    )
    settings = {"backoff_base_s": 0.02, "backoff_max_s": 0.2, "max_retries": 12}
    settings.update(config)
    return Engine(backend, EngineConfig(**settings), cache=cache)


async def direct_answer(url: str, prompt: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{url}/v1/completions",
            json={"model": MODEL, "prompt": prompt, "max_tokens": 16, "temperature": 0.0},
        ) as response,
    ):
        return (await response.json())["choices"][0]["text"]


async def test_ten_thousand_requests_correct_deduplicated_then_cached(tmp_path):
    prompts = [f"Question {i % 2500}: how many legs has a spider?" for i in range(10_000)]
    requests = [Request(prompt=p, params=PARAMS) for p in prompts]
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        cache_path = tmp_path / "cache.sqlite"
        async with engine_for(server.url, ResponseCache(cache_path)) as engine:
            first = await engine.generate_many(requests)
        assert not [r for r in first if isinstance(r, RequestFailed)]
        # Each distinct prompt reached the server once: the rest were shared or cached.
        assert await served_sequences(server.url) == 2500
        for index in (0, 1, 777, 2499, 9999):
            assert first[index].text == await direct_answer(server.url, prompts[index])
        assert all(first[i].text == first[i % 2500].text for i in range(10_000))
        totals = engine.ledger.snapshot()["totals"]
        assert totals["requests"] == 2500
        assert totals["cache_hits"] + totals["deduplicated"] == 7500

        before = await served_sequences(server.url)
        async with engine_for(server.url, ResponseCache(cache_path)) as engine:
            second = await engine.generate_many(requests)
        assert await served_sequences(server.url) == before  # zero server requests
        assert [r.text for r in second] == [r.text for r in first]
        totals = engine.ledger.snapshot()["totals"]
        assert totals["requests"] == 0 and totals["cost_usd"] == 0
        assert totals["cache_hits"] == 10_000


async def test_429_storm_ends_with_every_request_answered():
    # A simulated minute lasts two real seconds: a burst of 60 calls, then 30 calls per second,
    # far below what 64 calls in flight to a zero-latency server ask for even on a busy CPU.
    limits = RateLimits(requests_per_minute=60)
    config = SimulatedServerConfig(zero_latency=True, rate_limits=limits, time_scale=30.0)
    requests = [Request(prompt=f"q{i}", params=PARAMS) for i in range(150)]
    async with SimulatedServer(config) as server:
        # No client-side limit: the engine learns from 429s, Retry-After and the rate-limit
        # headers (which, once seen, pace calls instead of AIMD shrinking the window).
        async with engine_for(server.url, max_batch_size=1, max_concurrency=64) as engine:
            results = await engine.generate_many(requests)
        assert not [r for r in results if isinstance(r, RequestFailed)]
        assert await rate_limited_answers(server.url) > 0
        assert await served_sequences(server.url) == 150
        assert engine.pacing.server.active  # the headers took over the pacing


async def test_client_side_rate_limit_keeps_429s_rare():
    # The server's minute is three real seconds at time_scale 20: a bucket of 60 calls refilled
    # at 20 a second. The client allows itself 54 calls in any 3 s, 10% below the limit, as one
    # configures it: 54 calls now, the other 36 three seconds later. The client's limit holds
    # for the moments calls leave; the server counts the moments they arrive, later by however
    # long the loaded event loop takes to carry them. A 429 needs more than 60 + 20 T arrivals
    # within some T seconds, so some of the first 54 calls would have to arrive more than 1.5 s
    # after they left, half the window: far beyond what a loaded CPU delays a loopback call.
    # Without the client's limit, 90 calls at once draw at least 30 429s.
    limits = RateLimits(requests_per_minute=60)
    config = SimulatedServerConfig(zero_latency=True, rate_limits=limits, time_scale=20.0)
    requests = [Request(prompt=f"q{i}", params=PARAMS) for i in range(90)]
    async with SimulatedServer(config) as server:
        async with engine_for(
            server.url, max_batch_size=1, requests_per_minute=54, rate_window_s=3.0
        ) as engine:
            results = await engine.generate_many(requests)
        assert not [r for r in results if isinstance(r, RequestFailed)]
        assert await served_sequences(server.url) == 90
        assert await rate_limited_answers(server.url) == 0


@pytest.mark.parametrize(
    "fault",
    ["server_error", "connection_reset", "hang", "malformed_json", "truncated_body", "slow_body"],
)
async def test_each_fault_kind_is_recovered(fault):
    requests = [Request(prompt=f"fault test {i}", params=PARAMS) for i in range(120)]
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as clean:
        async with engine_for(clean.url) as engine:
            expected = [r.text for r in await engine.generate_many(requests)]
    rates = FaultRates(**{fault: 0.2, "slow_body_seconds": 0.3, "hang_seconds": 5.0, "seed": 3})
    config = SimulatedServerConfig(zero_latency=True, faults=rates)
    async with SimulatedServer(config) as server:
        async with engine_for(server.url, max_batch_size=8) as engine:
            results = await engine.generate_many(requests)
    failed = [r for r in results if isinstance(r, RequestFailed)]
    assert not failed, failed[:1]
    assert [r.text for r in results] == expected
    if fault != "slow_body":  # a slow body still arrives whole: nothing to retry
        assert engine.ledger.snapshot()["totals"]["retries"] > 0


async def test_faults_beyond_the_retry_bound_are_reported_not_dropped():
    rates = FaultRates(server_error=1.0)
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True, faults=rates)) as server:
        async with engine_for(server.url, max_retries=2) as engine:
            results = await engine.generate_many(
                [Request(prompt=f"x{i}", params=PARAMS) for i in range(10)]
            )
    assert all(isinstance(r, RequestFailed) and r.kind == "server_error" for r in results)
    assert engine.ledger.snapshot()["totals"]["failures"] == 10
