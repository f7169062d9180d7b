"""The engine against the simulated server: paced by its rate-limit headers with no client limit
configured, and its window found by measurement when nobody gave one."""

from __future__ import annotations

import aiohttp
import pytest

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Completion, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from backends.simulated.config import RateLimits
from backends.simulated.metrics import metric_total, parse_prometheus
from engine.adaptive_window import MeasuredWindow
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.queues import QueuedRequest
from engine.token_estimate import TokenEstimator

MODEL = "simulated-llama-2-7b-chat"
PARAMS = SamplingParams(max_tokens=16)


async def server_total(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return metric_total(parse_prometheus(await response.text()), name)


def engine_for(url: str, capabilities: Capabilities, **config: object) -> Engine:
    backend = OpenAICompatibleBackend(
        f"{url}/v1", MODEL, capabilities=capabilities, request_timeout_s=30.0
    )
    settings: dict[str, object] = {"backoff_base_s": 0.02, "backoff_max_s": 0.2}
    settings.update(config)
    return Engine(backend, EngineConfig(**settings))  # type: ignore[arg-type]


async def test_the_servers_headers_pace_calls_without_a_client_limit() -> None:
    # A bucket of 30 calls refilled at 100 a second (a 600-per-minute limit, a 5% burst, a
    # minute of 0.6 s). Eight calls in flight to a zero-latency server ask for far more; with no
    # client limit configured, only the server's x-ratelimit headers can keep 429s rare.
    limits = RateLimits(requests_per_minute=600, burst_fraction=0.05)
    config = SimulatedServerConfig(zero_latency=True, rate_limits=limits, time_scale=10.0)
    requests = [Request(prompt=f"q{i}", params=PARAMS) for i in range(300)]
    async with SimulatedServer(config) as server:
        capabilities = Capabilities(max_concurrency=8)
        async with engine_for(server.url, capabilities, max_batch_size=1) as engine:
            results = await engine.generate_many(requests)
            assert engine.pacing.server.active
        assert not [r for r in results if isinstance(r, RequestFailed)]
        assert await server_total(server.url, "sim_sequences_served_total") == 300
        assert await server_total(server.url, "sim_rate_limited_total") <= 15


async def test_the_window_grows_past_the_old_default_on_a_256_slot_server() -> None:
    config = SimulatedServerConfig(time_scale=50.0)
    requests = [
        Request(prompt=f"Question {i}: what is {i} + 1?", params=PARAMS) for i in range(3000)
    ]
    async with SimulatedServer(config) as server:
        async with engine_for(server.url, Capabilities()) as engine:
            assert isinstance(engine.window, MeasuredWindow)
            results = await engine.generate_many(requests)
            assert engine.window.size > 64
            assert engine._probe is not None and engine._probe.readings > 0
            assert engine.describe()["window_measured"] is True
        assert not [r for r in results if isinstance(r, RequestFailed)]


async def test_a_configured_concurrency_stays_a_fixed_window() -> None:
    async with SimulatedServer(SimulatedServerConfig(zero_latency=True)) as server:
        async with engine_for(server.url, Capabilities(), max_concurrency=48) as engine:
            assert not isinstance(engine.window, MeasuredWindow)
            await engine.generate_many([Request(prompt=f"q{i}", params=PARAMS) for i in range(200)])
            assert engine.window.size == 48


def test_token_estimates_learn_the_servers_count() -> None:
    estimator = TokenEstimator()
    item = QueuedRequest(Request(prompt="x" * 400, params=PARAMS), None, "x" * 400, None, 20, "s")  # type: ignore[arg-type]
    assert estimator.request(item, PARAMS) == (100.0, 16.0)
    for _ in range(50):  # the server counts 10% more prompt tokens than characters / 4
        estimator.learn([item], [Completion(("a",), 110, 1, ("stop",))])
    assert estimator.request(item, PARAMS)[0] == pytest.approx(110.0)
    estimator.learn([item], [Completion(("a",), 0, 1, ("stop",))])  # no usage: nothing learnt
    assert estimator.ratio == pytest.approx(1.1)


async def test_the_transport_hands_rate_limit_headers_to_its_observer() -> None:
    limits = RateLimits(requests_per_minute=600, tokens_per_minute=100_000)
    config = SimulatedServerConfig(zero_latency=True, rate_limits=limits)
    seen: list[dict[str, str]] = []
    async with SimulatedServer(config) as server:
        backend = OpenAICompatibleBackend(f"{server.url}/v1", MODEL)
        backend.rate_limit_observer = seen.append
        try:
            await backend.complete(["hello"], PARAMS)
            assert await backend.metrics_text() is not None
        finally:
            await backend.close()
    assert seen and seen[0]["x-ratelimit-limit-requests"] == "600"
    assert {"x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"} <= set(seen[0])
