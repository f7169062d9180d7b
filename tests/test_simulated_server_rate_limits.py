"""API mode: token-bucket RPM/TPM limits, 429s with Retry-After and x-ratelimit-* headers."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from backends.simulated import (
    RateLimits,
    SimulatedServer,
    SimulatedServerConfig,
    count_tokens,
    metric_total,
    parse_prometheus,
)
from backends.simulated.rate_limits import RateLimiter, format_reset


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_request_bucket_allows_a_full_minute_then_refills_continuously():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(requests_per_minute=60), time_scale=1.0, clock=clock)
    assert all(limiter.acquire(0).allowed for _ in range(60))
    refused = limiter.acquire(0)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(1.0)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    clock.now += 0.5
    assert not limiter.acquire(0).allowed
    clock.now += 0.5
    assert limiter.acquire(0).allowed


def test_token_bucket_charges_prompt_plus_max_tokens_and_time_scale_shrinks_the_wait():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(tokens_per_minute=1000), time_scale=10.0, clock=clock)
    assert limiter.acquire(600).allowed
    refused = limiter.acquire(600)
    assert not refused.allowed
    # 200 tokens missing at 1000 per simulated minute = 12 simulated s = 1.2 real s at scale 10.
    assert refused.retry_after_s == pytest.approx(1.2)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "400"
    clock.now += 1.2
    assert limiter.acquire(600).allowed


def test_a_refused_request_costs_nothing():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=10, tokens_per_minute=100)
    limiter = RateLimiter(limits, time_scale=1.0, clock=clock)
    assert limiter.acquire(90).allowed
    before = limiter.acquire(50)
    assert not before.allowed
    after = limiter.acquire(10)
    assert after.allowed
    assert after.headers["x-ratelimit-remaining-requests"] == "8"
    assert after.headers["x-ratelimit-remaining-tokens"] == "0"


def test_request_larger_than_the_bucket_is_refused_without_retry_after():
    limiter = RateLimiter(RateLimits(tokens_per_minute=100), time_scale=1.0, clock=FakeClock())
    decision = limiter.acquire(101)
    assert not decision.allowed
    assert decision.retry_after_s is None
    assert "Request too large" in decision.message


def test_burst_fraction_shrinks_the_bucket():
    clock = FakeClock()
    limits = RateLimits(requests_per_minute=600, burst_fraction=0.1)
    limiter = RateLimiter(limits, time_scale=1.0, clock=clock)
    assert sum(limiter.acquire(0).allowed for _ in range(100)) == 60


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.0123, "13ms"), (1.5, "1.5s"), (2.0, "2s"), (150.0, "2m30s")]
)
def test_reset_durations_are_written_like_openai(seconds, text):
    assert format_reset(seconds) == text


async def test_live_server_answers_429_with_headers_and_serves_after_retry_after():
    # 60 requests per simulated minute at time scale 6: a bucket of 60 refilling at 6 per second.
    config = SimulatedServerConfig(
        zero_latency=True, time_scale=6.0, rate_limits=RateLimits(requests_per_minute=60)
    )
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        url = f"{server.url}/v1/completions"
        payload = {"prompt": "Hello.", "max_tokens": 4}

        async def send() -> tuple[int, dict[str, str]]:
            async with client.post(url, json=payload) as response:
                await response.read()
                return response.status, dict(response.headers)

        started = time.monotonic()
        results = await asyncio.gather(*(send() for _ in range(80)))
        refilled = 6 * (time.monotonic() - started)  # what the bucket can have gained meanwhile
        statuses = [status for status, _ in results]
        # The full bucket admits the first 60; beyond them only what refilled while they came.
        assert 60 <= statuses.count(200) <= 60 + refilled + 1
        refused = [headers for status, headers in results if status == 429]
        assert len(refused) == 80 - statuses.count(200) > 0
        for headers in refused:
            assert 0 < float(headers["Retry-After"]) <= 1 / 6 + 1e-3
            assert int(headers["retry-after-ms"]) >= 1
            assert headers["x-ratelimit-limit-requests"] == "60"
            assert headers["x-ratelimit-remaining-requests"] == "0"
            assert headers["x-ratelimit-reset-requests"].endswith(("ms", "s"))
        # Nothing else is sent now, so a refusal's Retry-After is exact: waiting it out is enough.
        status, headers = await send()
        if status == 429:
            refused.append(headers)
            await asyncio.sleep(float(headers["Retry-After"]) + 0.001)  # rounded to ms
            status, headers = await send()
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "60"
        async with client.get(f"{server.url}/metrics") as response:
            samples = parse_prometheus(await response.text())
    assert metric_total(samples, "sim_rate_limited_total") == len(refused)
    assert metric_total(samples, "sim_sequences_served_total") == statuses.count(200) + 1
    assert metric_total(samples, "sim_http_requests_total", status="429") == len(refused)


async def test_live_token_limit_counts_prompt_plus_max_tokens_times_n():
    prompt = "x" * 400  # 100 tokens
    cost = count_tokens(prompt) + 50 * 2
    config = SimulatedServerConfig(
        zero_latency=True, rate_limits=RateLimits(tokens_per_minute=cost * 3)
    )
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        payload = {"prompt": prompt, "max_tokens": 50, "n": 2}
        statuses = []
        for _ in range(4):
            async with client.post(f"{server.url}/v1/completions", json=payload) as response:
                statuses.append(response.status)
                remaining = response.headers["x-ratelimit-remaining-tokens"]
        assert statuses == [200, 200, 200, 429]
        assert int(remaining) < cost
