"""Injected faults and outages, each observed from a plain aiohttp client."""

from __future__ import annotations

import asyncio

import aiohttp
import orjson
import pytest

from backends.simulated import (
    FaultRates,
    OutputLengths,
    SimulatedServer,
    SimulatedServerConfig,
    metric_total,
    parse_prometheus,
)
from tests.waiting import DEADLINE_S, refuses_connections, wait_until_async

PAYLOAD = {"prompt": "Is 7 a prime number? Answer Yes or No.", "max_tokens": 32}
LONG_PAYLOAD = {**PAYLOAD, "max_tokens": 1000}


async def outcome(
    client: aiohttp.ClientSession, url: str, timeout_s: float = DEADLINE_S, payload: dict = PAYLOAD
) -> str:
    """What the client saw: "ok", "status:N", "malformed", "truncated", "reset" or "timeout"."""
    try:
        async with client.post(
            f"{url}/v1/completions",
            json=payload,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as response:
            body = await response.read()
            if response.status != 200:
                return f"status:{response.status}"
            try:
                orjson.loads(body)
            except orjson.JSONDecodeError:
                return "malformed"
            return "ok"
    except aiohttp.ClientPayloadError:
        return "truncated"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        return "reset"
    except TimeoutError:
        return "timeout"


async def served(client: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with client.get(f"{url}/metrics") as response:
        return parse_prometheus(await response.text())


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("server_error", {"status:500", "status:503"}),
        ("connection_reset", {"reset"}),
        ("malformed_json", {"malformed"}),
        ("truncated_body", {"truncated"}),
        ("hang", {"timeout"}),
    ],
)
async def test_each_fault_kind_is_observable_and_never_counted_as_served(kind, expected):
    config = SimulatedServerConfig(zero_latency=True, faults=FaultRates(**{kind: 1.0}))
    # Only a hang needs the client to give up; every other fault answers, however slowly.
    timeout_s = 0.3 if kind == "hang" else DEADLINE_S
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        seen = {await outcome(client, server.url, timeout_s=timeout_s) for _ in range(3)}
        assert seen <= expected
        samples = await served(client, server.url)
    assert metric_total(samples, "sim_faults_injected_total", kind=kind) == 3
    assert metric_total(samples, "sim_sequences_served_total") == 0
    assert metric_total(samples, "sim_completion_tokens_served_total") == 0


async def test_hang_with_a_limit_drops_the_connection():
    config = SimulatedServerConfig(zero_latency=True, faults=FaultRates(hang=1.0, hang_seconds=0.1))
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        assert await outcome(client, server.url) == "reset"


async def test_slow_body_is_a_valid_answer_in_several_pieces():
    config = SimulatedServerConfig(
        zero_latency=True, faults=FaultRates(slow_body=1.0, slow_body_seconds=0.3)
    )
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        async with client.post(f"{server.url}/v1/completions", json=PAYLOAD) as response:
            assert response.status == 200
            pieces = [piece async for piece in response.content.iter_any()]
        assert len(pieces) > 1
        body = orjson.loads(b"".join(pieces))
        assert body["choices"][0]["text"]
        samples = await served(client, server.url)
    assert metric_total(samples, "sim_sequences_served_total") == 1
    assert metric_total(samples, "sim_faults_injected_total", kind="slow_body") == 1


async def test_fault_mixture_is_seeded_and_repeatable():
    rates = FaultRates(
        server_error=0.1,
        connection_reset=0.1,
        malformed_json=0.1,
        truncated_body=0.1,
        hang=0.1,
        hang_seconds=0.02,
        seed=3,
    )
    runs = []
    for _ in range(2):
        config = SimulatedServerConfig(zero_latency=True, faults=rates)
        async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
            outcomes = [await outcome(client, server.url) for _ in range(60)]
            samples = await served(client, server.url)
        runs.append(outcomes)
        assert metric_total(samples, "sim_sequences_served_total") == outcomes.count("ok")
        faults = metric_total(samples, "sim_faults_injected_total")
        assert faults == len(outcomes) - outcomes.count("ok")
    assert runs[0] == runs[1]
    assert 0.3 <= runs[0].count("ok") / 60 <= 0.7
    assert {"status:500", "status:503"} & set(runs[0])
    assert {"reset", "malformed", "truncated"} <= set(runs[0])


def slow_config() -> SimulatedServerConfig:
    # One answer of 400 tokens takes ~5 simulated seconds: about 1 real second at scale 5.
    return SimulatedServerConfig(time_scale=5.0, output_lengths=OutputLengths("fixed", mean=400))


async def metric(client: aiohttp.ClientSession, url: str, name: str) -> float:
    return metric_total(await served(client, url), name)


async def running_one(client: aiohttp.ClientSession, url: str) -> bool:
    return await metric(client, url, "vllm:num_requests_running") == 1


async def test_take_down_refuses_connections_then_comes_back_on_the_same_port():
    async with SimulatedServer(slow_config()) as server, aiohttp.ClientSession() as client:
        in_flight = asyncio.ensure_future(outcome(client, server.url, payload=LONG_PAYLOAD))
        assert await wait_until_async(lambda: running_one(client, server.url))
        asked = asyncio.get_running_loop().time()
        await server.take_down(0.4)
        assert refuses_connections(server.port)  # at once, before the loop runs anything else
        assert await in_flight == "reset"
        assert await wait_until_async(lambda: not refuses_connections(server.port))
        assert asyncio.get_running_loop().time() - asked >= 0.4  # not back before its time
        samples = await served(client, server.url)
    assert metric_total(samples, "sim_restarts_total") == 1
    assert metric_total(samples, "sim_sequences_aborted_total") == 1
    assert metric_total(samples, "vllm:num_requests_running") == 0
    assert metric_total(samples, "sim_sequences_served_total") == 0


async def test_restart_loses_work_in_flight_and_serves_straight_away():
    async with SimulatedServer(slow_config()) as server, aiohttp.ClientSession() as client:
        port = server.port
        in_flight = asyncio.ensure_future(outcome(client, server.url, payload=LONG_PAYLOAD))
        assert await wait_until_async(lambda: running_one(client, server.url))
        await server.restart()
        assert await in_flight == "reset"
        assert server.port == port
        async with client.post(
            f"{server.url}/v1/completions", json={"prompt": "Hi.", "max_tokens": 1}
        ) as response:
            assert response.status == 200
        assert await metric(client, server.url, "sim_sequences_aborted_total") == 1


async def test_control_route_takes_the_server_down_until_brought_up():
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        async with client.post(f"{server.url}/sim/down", json={"seconds": None}) as response:
            assert response.status == 202
        # The route acts after its answer has left: wait for the crash, then it stays down.
        assert await wait_until_async(lambda: server.counters.restarts == 1)
        assert refuses_connections(server.port)
        await server.bring_up()
        assert await outcome(client, server.url) == "ok"


async def test_control_route_takes_the_server_down_for_a_while():
    config = SimulatedServerConfig(zero_latency=True)
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:
        loop = asyncio.get_running_loop()
        asked = loop.time()
        async with client.post(f"{server.url}/sim/down", json={"seconds": 0.4}) as response:
            assert response.status == 202
        assert await wait_until_async(lambda: server.counters.restarts == 1)
        assert await wait_until_async(lambda: not refuses_connections(server.port))
        assert loop.time() - asked >= 0.4  # it stayed down for the time asked
        assert await outcome(client, server.url) == "ok"
