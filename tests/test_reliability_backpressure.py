"""Back-pressure: submitting far more work than the server can take at once creates a bounded
number of tasks, sockets and queued items, and memory beyond the results themselves does not grow
with the amount of pending work.

Measured against the zero-latency simulated server in a child process (so only the client's
allocations are traced, with tracemalloc). At 1,000,000 cheap requests `generate_many` peaked at
303 MB traced, of which 300 MB are the results it returns and 3 MB everything else, the same
3 MB as at 100,000 requests (a list of 1,000,000 prebuilt requests adds its own 143 MB). The
test runs 5,000 and 40,000 requests and checks that the overhead stays flat while the results
grow eightfold. The evaluator can stream its records instead of keeping them (`keep_records=False`,
as `gpo eval` does, since they are on disk): then only the scores matrix grows with the chains."""

from __future__ import annotations

import asyncio
import gc
import os
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Completion, Request, SamplingParams
from backends.simulated import SimulatedServerConfig, SimulatedServerProcess, start_server_process
from benchmarks import load_task
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.evaluator import Evaluator
from tests.gpo_fakes import DATA_DIR

MAX_PENDING = 512
WINDOW = 256
CONNECTIONS = 64


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedServerProcess]:
    task = load_task("bbh/navigate", DATA_DIR)
    key = {s.input: s.target for s in task.split("test")}
    with start_server_process(SimulatedServerConfig(zero_latency=True), answer_key=key) as handle:
        yield handle


def make_engine(url: str, **config: object) -> Engine:
    backend = OpenAICompatibleBackend(
        f"{url}/v1",
        "simulated-llama-2-7b-chat",
        capabilities=Capabilities(max_concurrency=WINDOW),
        max_connections=CONNECTIONS,
    )
    settings = {"max_concurrency": WINDOW, "max_pending": MAX_PENDING, **config}
    return Engine(backend, EngineConfig(**settings))  # type: ignore[arg-type]


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").is_dir() else 0


@dataclass
class Peaks:
    tasks: int = 0
    queued: int = 0
    in_flight: int = 0
    descriptors: int = 0


async def watch(engine: Engine, peaks: Peaks, stop: asyncio.Event) -> None:
    while not stop.is_set():
        peaks.tasks = max(peaks.tasks, len(asyncio.all_tasks()))
        peaks.queued = max(peaks.queued, engine.queued)
        peaks.in_flight = max(peaks.in_flight, engine.in_flight)
        peaks.descriptors = max(peaks.descriptors, open_descriptors())
        await asyncio.sleep(0.002)


def requests(count: int, tag: str) -> list[Request]:
    params = SamplingParams(max_tokens=4)
    return [Request(prompt=f"{tag} question number {i}", params=params) for i in range(count)]


async def test_a_flood_of_requests_keeps_tasks_sockets_and_queues_bounded(server) -> None:
    count = 30_000
    batch = requests(count, "flood")
    peaks = Peaks()
    stop = asyncio.Event()
    baseline_descriptors = open_descriptors()
    async with make_engine(server.url) as engine:
        watcher = asyncio.create_task(watch(engine, peaks, stop))
        results = await engine.generate_many(batch)
        stop.set()
        await watcher
    assert not any(isinstance(result, RequestFailed) for result in results)
    assert all(isinstance(result, Completion) and result.texts for result in results)
    # One worker per pending request at most, plus one task per call in flight and a few more.
    assert peaks.tasks <= MAX_PENDING + WINDOW + 16
    assert peaks.queued <= MAX_PENDING
    assert peaks.in_flight <= WINDOW
    assert peaks.descriptors <= baseline_descriptors + CONNECTIONS + 16


async def test_evaluator_runs_a_bounded_number_of_chains(server) -> None:
    task = load_task("bbh/navigate", DATA_DIR)
    prompts = [f"Think step by step, variant {i}." for i in range(40)]  # 11,520 requests
    peaks = Peaks()
    stop = asyncio.Event()
    async with make_engine(server.url, chat_template="chatml") as engine:
        evaluator = Evaluator(engine, max_active_chains=300)
        watcher = asyncio.create_task(watch(engine, peaks, stop))
        result = await evaluator.evaluate(task, prompts, "test")
        stop.set()
        await watcher
    assert result.failures == 0 and len(result.records) == result.scores.size == 40 * 144
    assert peaks.tasks <= 300 + WINDOW + 16
    assert peaks.queued <= 300


async def test_evaluator_can_stream_records_and_keep_only_the_scores(server) -> None:
    task = load_task("bbh/navigate", DATA_DIR)
    streamed_ids: set[tuple[int, str]] = set()

    def count(record) -> None:
        streamed_ids.add((record.prompt_index, record.sample_id))

    async def retained_by(prompt_count: int, **options: object) -> tuple[object, int]:
        prompts = [f"Check each move, variant {i}." for i in range(prompt_count)]
        async with make_engine(server.url, chat_template="chatml") as engine:
            evaluator = Evaluator(engine)
            await evaluator.evaluate(task, ["Warm up."], "test", limit=8)  # one-time allocations
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                result = await evaluator.evaluate(task, prompts, "test", **options)
                gc.collect()  # finished chains' tasks and frames form cycles: count live memory
                retained = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
        return result, retained

    streamed, streamed_small = await retained_by(10, on_record=count, keep_records=False)
    kept, kept_small = await retained_by(10)
    assert streamed.records == [] and len(kept.records) == 1440  # type: ignore[attr-defined]
    assert len(streamed_ids) == 1440  # every record still reached on_record
    assert np.array_equal(streamed.scores, kept.scores, equal_nan=True)  # type: ignore[attr-defined]
    # Four times the chains: kept records grow with them, streamed ones leave only the scores
    # matrix (8 bytes a chain) beside the engine's fixed, window-sized state.
    _, streamed_large = await retained_by(40, keep_records=False)
    _, kept_large = await retained_by(40)
    records_bytes = kept_large - kept_small
    assert records_bytes > 3 * 1440 * 300
    assert streamed_large - streamed_small < records_bytes / 10


async def traced_overhead(url: str, count: int) -> tuple[int, int]:
    """(peak traced bytes beyond what stays allocated afterwards, bytes retained: results)."""
    batch = requests(count, f"mem{count}")
    async with make_engine(url) as engine:
        await engine.generate(Request(prompt="warm up", params=SamplingParams(max_tokens=4)))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            results = await engine.generate_many(batch)
            retained, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(results) == count
    return peak - retained, retained - before


@pytest.mark.slow
async def test_memory_beyond_the_results_does_not_grow_with_pending_work(server) -> None:
    small_overhead, small_results = await traced_overhead(server.url, 5_000)
    large_overhead, large_results = await traced_overhead(server.url, 40_000)
    assert large_results > 6 * small_results  # the results themselves grow with the count
    # 35,000 more pending requests: even 100 bytes each would add 3.5 MB.
    assert large_overhead < small_overhead + 1_500_000, (small_overhead, large_overhead)
