"""The fault matrix, reduced: every fault kind of the simulated server at a low and a high rate,
500 requests per cell with short client timeouts, each cell checked record by record against a
fault-free run (no silent loss, no hang, bounded retries). The full 10,000-request matrix is
`python -m perf.fault_matrix`. Also: the checker itself catches a lost or altered record, a
server too broken for the retry budget ends with failures marked and counted, not dropped, and a
request that no rate limit can ever admit fails at once instead of retrying for hours."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Completion, Request, SamplingParams
from backends.simulated import FaultRates, RateLimits, SimulatedServer, SimulatedServerConfig
from benchmarks import Task, load_task
from engine.engine import Engine, EngineConfig, RequestFailed
from perf.fault_cells import (
    FAULT_KINDS,
    HIGH,
    LOW,
    REFERENCE_CELL,
    FaultCell,
    MatrixSettings,
    judge,
)
from perf.fault_matrix import Reference, run_cell, run_reference
from perf.fault_run import plan, run_evaluation
from tests.gpo_fakes import DATA_DIR
from tests.waiting import DEADLINE_S

SETTINGS = MatrixSettings(
    requests=500,
    data_dir=str(DATA_DIR),
    time_scale=20.0,
    request_timeout_s=1.0,
    slow_body_s=0.3,
    outage_simulated_s=30.0,  # 1.5 real seconds at this time scale
    max_batch_size=4,  # more HTTP calls, so more fault draws per cell
    max_retries=8,
    backoff_base_s=0.1,  # 8 retries span at least 4.5 s: more than two outages back to back
    backoff_max_s=2.0,
    cell_deadline_s=90.0,
    server="inprocess",
)


@pytest.fixture(scope="module")
def task() -> Task:
    return load_task(SETTINGS.task, SETTINGS.data_dir)


FAULT_FREE = dataclasses.replace(SETTINGS, request_timeout_s=DEADLINE_S)
"""For runs against a fault-free server, which must lose nothing: no call needs a short timeout
there, and a loaded CPU must not turn slow answers into failures."""


@pytest.fixture(scope="module")
def reference(task: Task, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    folder = tmp_path_factory.mktemp("reference")
    yield asyncio.run(run_reference(FAULT_FREE, task, folder))


def test_reference_run_is_complete(reference: Reference) -> None:
    result = reference.run.result
    assert result is not None
    assert len(reference.records) == result.scores.size >= SETTINGS.requests // 2
    assert result.failures == 0
    assert 0.0 < float(result.mean_scores.mean()) < 1.0  # real scores, not all right or wrong


@pytest.mark.parametrize("level", [LOW, HIGH])
@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_fault_cell_loses_nothing_silently(
    kind: str, level: str, task: Task, reference: Reference, tmp_path: Path
) -> None:
    cell = FaultCell(kind, level)
    outcome = asyncio.run(run_cell(SETTINGS, task, cell, reference, tmp_path))
    assert not outcome.hang, f"{cell} did not finish within {SETTINGS.cell_deadline_s} s"
    assert outcome.error is None, outcome.error
    assert outcome.silent_losses == 0, outcome.loss_examples
    assert not outcome.unbounded_retries
    assert outcome.records == outcome.planned_records == len(reference.records)
    assert outcome.identical + outcome.marked_failed == outcome.planned_records
    assert outcome.summary_failures == outcome.marked_failed
    if level == HIGH:
        # The fault really happened and was worked around, or the cell proves nothing.
        if kind == "rate_limit":
            assert outcome.rate_limited > 0
        elif kind in ("restart", "outage"):
            assert outcome.restarts >= 1
        else:
            assert outcome.faults_injected > 0
        if kind != "slow_body":  # a slow body is a correct answer, only late
            assert outcome.retries > 0


def test_checker_catches_a_missing_and_an_altered_record(
    task: Task, reference: Reference, tmp_path: Path
) -> None:
    run = asyncio.run(
        run_evaluation(
            FAULT_FREE, task, SimulatedServerConfig(time_scale=SETTINGS.time_scale), tmp_path / "c"
        )
    )
    assert run.result is not None
    intact = judge(REFERENCE_CELL, run, reference.records, SETTINGS)
    assert intact.ok and intact.identical == intact.planned_records

    dropped = run.result.records.pop()
    altered = run.result.records[0]
    run.result.records[0] = dataclasses.replace(altered, score=1.0 - altered.score)
    damaged = judge(REFERENCE_CELL, run, reference.records, SETTINGS)
    assert not damaged.ok
    assert damaged.silent_losses == 2
    assert any(dropped.sample_id in example for example in damaged.loss_examples)


def test_a_server_beyond_the_retry_budget_marks_and_counts_failures(
    task: Task, reference: Reference, tmp_path: Path
) -> None:
    harsh = dataclasses.replace(SETTINGS, max_retries=1, requests=200)
    config = SimulatedServerConfig(
        time_scale=SETTINGS.time_scale, faults=FaultRates(server_error=0.6, seed=3)
    )
    run = asyncio.run(run_evaluation(harsh, task, config, tmp_path / "c"))
    prompts, samples = plan(harsh, task)
    planned = {(p, s.id) for p in range(len(prompts)) for s in task.split(harsh.split)[:samples]}
    outcome = judge(
        FaultCell("server_error", HIGH), run, {k: reference.records[k] for k in planned}, harsh
    )
    assert run.result is not None
    assert outcome.silent_losses == 0, outcome.loss_examples
    assert outcome.records == len(planned)
    assert outcome.marked_failed > 0
    assert outcome.summary_failures == outcome.marked_failed == run.result.failures
    assert outcome.failure_reasons.get("server_error", 0) > 0
    failed = [r for r in run.result.records if r.failure is not None]
    assert all("HTTP 50" in r.failure for r in failed)


async def test_a_request_too_large_for_the_rate_limit_fails_at_once_not_after_200_retries() -> None:
    # The bucket holds 3,000 tokens: a 3,500-token request can never be admitted (429 without
    # Retry-After, "Request too large"), while a prompt list too large as a whole is split and
    # every prompt in it answered.
    config = SimulatedServerConfig(
        time_scale=100.0, zero_latency=True, rate_limits=RateLimits(tokens_per_minute=3000)
    )
    async with SimulatedServer(config) as server:
        backend = OpenAICompatibleBackend(f"{server.url}/v1", config.model)
        engine_config = EngineConfig(backoff_base_s=0.01, backoff_max_s=0.1)
        async with Engine(backend, engine_config) as engine, asyncio.timeout(60):
            huge = SamplingParams(max_tokens=3500)  # fits the context, never the bucket
            (failure,) = await engine.generate_many([Request(prompt="Tell all.", params=huge)])
            refusals = server.counters.rate_limited
            listed = [
                Request(prompt=f"Question {i}?", params=SamplingParams(max_tokens=200))
                for i in range(32)
            ]
            answers = await engine.generate_many(listed)
    assert isinstance(failure, RequestFailed)
    assert failure.attempts == 1 and "too large" in failure.reason.lower()
    assert refusals == 1  # refused once, not retried 200 times over hours
    assert all(isinstance(answer, Completion) for answer in answers)
