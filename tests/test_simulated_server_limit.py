"""The step model's arithmetic, and the live server against its computed physical limit."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import orjson
import pytest

from backends.errors import ConfigError
from backends.simulated import (
    OutputLengths,
    SimulatedServer,
    SimulatedServerConfig,
    analyse_workload,
    metric_total,
    parse_prometheus,
    theoretical_makespan,
    theoretical_throughput,
    workload_from_prompts,
)
from backends.simulated.batching import ContinuousBatcher, SequenceWork
from backends.simulated.tokens import prefix_block_hashes

TINY = SimulatedServerConfig(
    max_num_seqs=4,
    max_num_batched_tokens=100,
    max_model_len=512,
    kv_cache_blocks=1000,
    step_overhead_s=0.01,
    decode_time_per_seq_s=0.001,
    prefill_time_per_token_s=0.0001,
)


def run_offline(config: SimulatedServerConfig, sequences: list[SequenceWork]) -> tuple[float, int]:
    batcher = ContinuousBatcher(config, prefix_cache=None)
    for seq in sequences:
        batcher.submit(seq)
    total = 0.0
    most_running = 0
    while batcher.has_work:
        plan = batcher.plan_step()
        most_running = max(most_running, batcher.num_running)
        total += plan.duration_s
        batcher.complete_step(plan)
    return total, most_running


def test_one_sequence_is_a_prefill_step_then_one_decode_step_per_further_token():
    # Prefill 50 tokens (and sample token 1): 0.01 + 50 * 0.0001; then 4 decode steps of 0.011.
    assert theoretical_makespan(TINY, [(50, 5)]) == pytest.approx(0.015 + 4 * 0.011)


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget():
    # 250 tokens with a budget of 100: chunks of 100, 100, 50, then 2 decode steps.
    expected = 2 * (0.01 + 0.01) + (0.01 + 0.005) + 2 * 0.011
    limit = analyse_workload(TINY, [(250, 3)])
    assert limit.simulated_makespan_s == pytest.approx(expected)
    assert limit.steps == 5


def test_max_num_seqs_caps_the_batch():
    # Six sequences, four slots: four run for three steps, then two for three steps.
    total, most_running = run_offline(TINY, [SequenceWork(10, 3) for _ in range(6)])
    assert most_running == 4
    assert total == pytest.approx(3 * (0.01 + 0.004) + 3 * (0.01 + 0.002))


def test_cached_prefix_tokens_skip_prefill_cost():
    uncached = theoretical_makespan(TINY, [(96, 2)])
    cached = theoretical_makespan(TINY, [(96, 2, 64)])
    assert uncached - cached == pytest.approx(64 * 0.0001)
    # The last prompt token is always computed, even when the whole prompt is cached.
    assert theoretical_makespan(TINY, [(96, 2, 96)]) == pytest.approx(
        theoretical_makespan(TINY, [(96, 2, 95)])
    )


def test_kv_cache_capacity_limits_admission():
    small_kv = SimulatedServerConfig(
        max_num_seqs=4,
        max_num_batched_tokens=200,
        max_model_len=128,
        block_size=16,
        kv_cache_blocks=8,
        step_overhead_s=0.01,
        decode_time_per_seq_s=0.0,
        prefill_time_per_token_s=0.0,
    )
    # Each sequence needs (100 + 28) / 16 = 8 blocks: they must run one after the other.
    total, most_running = run_offline(small_kv, [SequenceWork(100, 28) for _ in range(2)])
    assert most_running == 1
    assert total == pytest.approx(2 * 28 * 0.01)


def test_cancelling_frees_the_slot_at_once():
    batcher = ContinuousBatcher(TINY, prefix_cache=None)
    first, second = SequenceWork(10, 50), SequenceWork(10, 50)
    for seq in (first, second):
        batcher.submit(seq)
    batcher.complete_step(batcher.plan_step())
    assert batcher.num_running == 2
    batcher.cancel(first)
    assert batcher.num_running == 1
    finished = []
    while batcher.has_work:
        finished += batcher.complete_step(batcher.plan_step())
    assert finished == [second]
    assert batcher.kv_blocks_used == 0


def test_throughput_is_sequences_over_makespan_and_grows_with_the_batch():
    workload = [(50, 200)] * 512  # decode-heavy, so the batch size decides
    small = SimulatedServerConfig(max_num_seqs=32)
    large = SimulatedServerConfig(max_num_seqs=256)
    assert theoretical_throughput(small, workload) == pytest.approx(
        512 / theoretical_makespan(small, workload)
    )
    assert theoretical_throughput(large, workload) > 3 * theoretical_throughput(small, workload)
    scaled = SimulatedServerConfig(max_num_seqs=256, time_scale=10.0)
    assert theoretical_makespan(scaled, workload) == pytest.approx(
        theoretical_makespan(large, workload) / 10
    )


def test_workload_items_are_validated():
    with pytest.raises(ConfigError, match="max_model_len"):
        theoretical_makespan(SimulatedServerConfig(), [(4000, 200)])
    with pytest.raises(ConfigError, match=">= 1"):
        theoretical_makespan(SimulatedServerConfig(), [(0, 10)])


def test_workload_from_prompts_counts_shared_prefix_blocks():
    config = SimulatedServerConfig()
    shared = "s" * 64 * 10  # ten full blocks of 16 tokens
    items = workload_from_prompts(config, [shared + "a" * 40, shared + "b" * 40], [5, 5])
    assert items == [(170, 5, 0), (170, 5, 160)]


def test_a_next_turn_finds_the_previous_answer_cached_when_answers_are_given():
    config = SimulatedServerConfig()
    first = "q" * 64 * 4  # four full blocks
    answer = "a" * 64 * 6  # six blocks of generated tokens
    second = f"{first}{answer}<|im_end|>\nnext question"
    without = workload_from_prompts(config, [first, second], [96, 1])
    with_answers = workload_from_prompts(config, [first, second], [96, 1], [answer, "x"])
    assert without[1][2] == 4 * 16  # only the first prompt's blocks
    # The answer's last token is never fed through the model, so its last block is not full.
    assert with_answers[1][2] == (4 + 5) * 16
    # Continuing the chain from the prompt's keys gives the keys of hashing it all afresh.
    keys = prefix_block_hashes(first, config.block_size)
    assert prefix_block_hashes(second, 16, keys) == prefix_block_hashes(second, 16)
    with pytest.raises(ConfigError, match="output texts"):
        workload_from_prompts(config, [first], [1], ["a", "b"])


async def test_saturated_live_server_reaches_its_computed_limit():
    rng = random.Random(5)
    prompts = [f"{i:06d} " + "w" * (4 * rng.randint(100, 400) - 7) for i in range(1000)]
    base = SimulatedServerConfig(output_lengths=OutputLengths("uniform", low=20, high=120))
    # The output lengths the server will choose are deterministic; measure them with a
    # zero-latency twin, then size time_scale so the live run takes about two seconds.
    async with (
        SimulatedServer(
            SimulatedServerConfig(zero_latency=True, output_lengths=base.output_lengths)
        ) as twin,
        aiohttp.ClientSession() as client,
    ):
        payload = {"prompt": prompts, "max_tokens": 200, "temperature": 0}
        async with client.post(f"{twin.url}/v1/completions", data=orjson.dumps(payload)) as r:
            choices = orjson.loads(await r.read())["choices"]
    outputs = [max(1, len(c["text"]) // 4) for c in choices]
    workload = workload_from_prompts(base, prompts, outputs)
    simulated = analyse_workload(base, workload).simulated_makespan_s
    config = SimulatedServerConfig(output_lengths=base.output_lengths, time_scale=simulated / 2.0)
    limit = analyse_workload(config, workload)

    batch = 16
    window = asyncio.Semaphore(2 * config.max_num_seqs // batch)
    async with SimulatedServer(config) as server, aiohttp.ClientSession() as client:

        async def send(chunk: list[str]) -> int:
            async with window:
                body = orjson.dumps({"prompt": chunk, "max_tokens": 200, "temperature": 0})
                async with client.post(f"{server.url}/v1/completions", data=body) as response:
                    return orjson.loads(await response.read())["usage"]["completion_tokens"]

        started = time.perf_counter()
        tasks = []
        for start in range(0, len(prompts), batch):
            tasks.append(asyncio.ensure_future(send(prompts[start : start + batch])))
            await asyncio.sleep(0)
        completion_tokens = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        async with client.get(f"{server.url}/metrics") as response:
            busy_s = metric_total(
                parse_prometheus(await response.text()), "sim_simulated_seconds_total"
            )
    assert sum(completion_tokens) == sum(outputs) == limit.output_tokens
    # The server's own clock: the GPU was busy for the limit's time and no longer, so the client
    # kept every step's batch as full as the computed schedule's. Wall time only bounds it from
    # below (the server never runs ahead of its clock); from above it measures the host's load,
    # since a server falling behind on a busy CPU gives the lost time up.
    ratio = busy_s / limit.simulated_makespan_s
    assert 0.99 <= ratio <= 1.01, f"busy {busy_s:.3f} s vs limit {limit.simulated_makespan_s:.3f}"
    assert elapsed >= 0.97 * limit.makespan_s, (
        f"live {elapsed:.3f} s vs limit {limit.makespan_s:.3f} s"
    )
