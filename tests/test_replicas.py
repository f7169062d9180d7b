"""Replicas of one role: prefix affinity with bounded loads, a killed replica drained and its
calls re-sent, the `--ROLE-routing` flag."""

from __future__ import annotations

import asyncio
import math
import random
import time

import pytest

from backends.errors import ConnectionFailed
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, SamplingParams
from backends.simulated import SimulatedServerConfig, start_server_process
from engine.endpoint_pool import EndpointPool
from engine.endpoint_spec import EndpointSpec
from engine.prefix_affinity import AffinityRouter, prefix_keys
from gpo.endpoint_flags import endpoint_spec_from_args
from gpo.resume import RESUMABLE_CHANGES, stored_arguments
from tests.test_endpoint_pool import FakeBackend, settle

PARAMS = SamplingParams(max_tokens=4)
QUESTIONS = [
    f"Question {i}: if you take {i} steps forward and {i + 3} steps back, where are you? " * 2
    for i in range(40)
]
CANDIDATES = [f"Candidate instruction number {c}: think step by step." for c in range(6)]


def first_turn(question: str, candidate: str) -> tuple[tuple[str, str], ...]:
    return (("user", f"{question}\n{candidate}"),)


async def test_a_second_turn_goes_to_the_replica_of_its_first() -> None:
    backends = [FakeBackend(name, gated=True) for name in "abcd"]
    pool = EndpointPool(backends)
    firsts = [first_turn(q, c) for q in QUESTIONS[:12] for c in CANDIDATES[:4]]
    tasks = []
    for messages in firsts:
        tasks.append(asyncio.create_task(pool.chat(messages, PARAMS)))
        await settle()
    for backend in backends:
        backend.gate.set()
    served = [(await task).text for task in tasks]
    assert len(set(served)) == 4, "the first turns are spread over every replica"
    random.Random(3).shuffle(order := list(range(len(firsts))))
    seconds = []
    for index in order:
        messages = (*firsts[index], ("assistant", served[index]), ("user", "So the answer is"))
        seconds.append(asyncio.create_task(pool.chat(messages, PARAMS)))
    again = [(await task).text for task in seconds]
    assert again == [served[index] for index in order]


async def test_candidates_on_one_sample_share_its_replica() -> None:
    backends = [FakeBackend(name) for name in "abcd"]
    pool = EndpointPool(backends)
    for question in QUESTIONS[:8]:
        answers = {(await pool.chat(first_turn(question, c), PARAMS)).text for c in CANDIDATES}
        assert len(answers) == 1, "one sample's question prefix stays on one replica"


def test_bounded_load_keeps_every_replica_within_one_plus_c_of_the_average() -> None:
    rng = random.Random(11)
    balance = 0.25
    router = AffinityRouter([1, 1, 1, 1], balance=balance)
    loads = [0.0] * 4
    usable = [True] * 4
    hot = prefix_keys("the same few-shot block for everyone " * 10)
    for step in range(2000):
        keys = hot if rng.random() < 0.7 else prefix_keys(f"sample {rng.random()}" * 20)
        if sum(loads) > 0 and rng.random() < 0.4:
            busy = [i for i, load in enumerate(loads) if load > 0]
            loads[rng.choice(busy)] -= 1
            continue
        index = router.choose(keys, loads, usable, 1.0)
        loads[index] += 1
        limit = math.ceil((1 + balance) * sum(loads) / 4)
        assert loads[index] <= limit, (step, loads)  # the bound holds where each call lands
    assert router.prefix_hits > 0


def test_a_down_replica_keys_move_to_the_next_and_new_keys_return() -> None:
    router = AffinityRouter([1, 1, 1, 1], balance=100.0)
    keys = [prefix_keys(f"prompt {i} " * 30) for i in range(200)]
    home = [router.ring_order(k[1])[0] for k in keys]
    idle = [0.0] * 4
    down = [True, False, True, True]
    for key, owner in zip(keys, home, strict=True):
        chosen = router.choose(key, idle, down, 1.0)
        assert chosen != 1
        expected = next(i for i in router.ring_order(key[1]) if down[i])
        assert chosen == expected if owner == 1 else chosen == owner
    fresh = [prefix_keys(f"later prompt {i} " * 30) for i in range(200)]
    back = [router.choose(k, idle, [True] * 4, 1.0) for k in fresh]
    assert back == [router.ring_order(k[1])[0] for k in fresh]
    assert back.count(1) > 0


async def test_a_killed_replica_is_drained_and_its_calls_answered_elsewhere() -> None:
    config = SimulatedServerConfig(time_scale=0.5, api_key=None)
    servers = [start_server_process(config) for _ in range(3)]
    try:
        capabilities = Capabilities(max_concurrency=config.max_num_seqs)
        backends = [
            OpenAICompatibleBackend(f"{s.url}/v1", config.model, capabilities=capabilities)
            for s in servers
        ]
        pool = EndpointPool(backends, cooldown_s=600.0, max_cooldown_s=600.0)
        params = SamplingParams(max_tokens=64)
        tasks = [
            asyncio.create_task(pool.chat(first_turn(q, c), params))
            for q in QUESTIONS[:30]
            for c in CANDIDATES[:4]
        ]
        busy: list[int] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # a replica holds calls in flight: kill it then
            busy = [i for i, s in enumerate(pool.status()) if s.outstanding_sequences > 0]
            if busy:
                break
            await asyncio.sleep(0.01)
        assert busy, "no replica ever held a call"
        victim = busy[0]
        servers[victim]._process.kill()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert not failed, failed[:3]
        status = pool.status()[victim]
        assert status.failures >= 1 and status.resent >= 1
        assert status.cooldown_left_s > 0, "the dead replica is drained"
        after = await asyncio.gather(
            *(pool.chat(first_turn(q, "after the kill"), params) for q in QUESTIONS)
        )
        assert len(after) == len(QUESTIONS)
        assert pool.status()[victim].requests == status.requests, "no new call goes to it"
        await pool.close()
    finally:
        for server in servers:
            server.stop()


async def test_every_replica_failing_surfaces_the_error() -> None:
    a, b = FakeBackend("a"), FakeBackend("b")
    a.fail_with = ConnectionFailed("refused", endpoint="a")
    b.fail_with = ConnectionFailed("refused", endpoint="b")
    pool = EndpointPool([a, b])
    with pytest.raises(ConnectionFailed):
        await pool.complete(["p"], PARAMS)
    assert a.calls == 1 and b.calls == 1


def test_the_routing_flag_parses_and_is_recorded() -> None:
    from gpo.optimize_args import build_optimize_parser

    parser = build_optimize_parser()
    base = ["--task", "bbh/navigate", "--scorer-url", "http://127.0.0.1:1/v1"]
    args = parser.parse_args([*base, "--scorer-url", "http://127.0.0.1:2/v1"])
    assert endpoint_spec_from_args(args, "scorer").routing == "affinity"
    args = parser.parse_args([*base, "--scorer-routing", "least-loaded"])
    assert endpoint_spec_from_args(args, "scorer").routing == "least-loaded"
    assert stored_arguments(args)["scorer_routing"] == "least-loaded"
    assert "scorer_routing" in RESUMABLE_CHANGES
    assert EndpointSpec().routing == "affinity"
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--scorer-routing", "random"])


async def test_a_prompt_list_is_split_so_each_prompt_meets_its_prefix() -> None:
    slots = Capabilities(max_concurrency=64)
    backends = [FakeBackend(name, capabilities=slots) for name in "abcd"]
    pool = EndpointPool(backends, balance=10.0)  # loose bound: the split alone is tested
    firsts = [f"{q}\n{CANDIDATES[0]}" for q in QUESTIONS[:16]]
    served = []
    for prompt in firsts:  # one at a time: idle replicas, so the ring places each
        served.append((await pool.complete([prompt], PARAMS))[0].text)
    assert len(set(served)) > 1
    order = list(range(len(firsts)))
    random.Random(5).shuffle(order)
    seconds = [f"{firsts[i]} answer {served[i]}. So the answer is" for i in order]
    answers = [c.text for c in await pool.complete(seconds, PARAMS)]
    assert answers == [served[i] for i in order]
    assert outstanding_total(pool) == 0


def outstanding_total(pool: EndpointPool) -> int:
    return sum(status.outstanding_sequences for status in pool.status())


def test_the_replica_workload_runs_and_loses_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    from perf.replicas import MODES, run_replica_bench

    runs = run_replica_bench(repeat=1, candidates=2, samples=4, time_scale=50.0)
    assert set(runs) == set(MODES)
    for mode, measured in runs.items():
        assert [run.chains for run in measured] == [8], mode
        assert [run.lost for run in measured] == [0], mode
    printed = capsys.readouterr().out
    assert "prefix-cache hit rate: affinity" in printed and "chains lost" in printed
