"""The Batch API end to end on the simulated server: its routes and files in OpenAI's shapes, the
engine's `BatchRunner` (answers into cache and ledger at the batch price, failed and expired lines
re-submitted or reported), and the ledger's batch billing against a hand-computed bill."""

from __future__ import annotations

import orjson
import pytest

from backends.openai_batch import BatchTransport, parse_result_line, request_line
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Completion, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from engine.batch_api import STATE_FILE, BatchRunner, BatchSettings
from engine.cache import ResponseCache
from engine.engine import Engine, RequestFailed
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from engine.request_key import request_key
from tests.waiting import wait_until_async

FAST = BatchSettings(gather_s=0.05, poll_first_s=0.02, poll_max_s=0.05, timeout_s=120)


def server_config(**extra) -> SimulatedServerConfig:
    return SimulatedServerConfig(zero_latency=True, batch_delay_s=0.0, **extra)


def backend_for(url: str) -> OpenAICompatibleBackend:
    return OpenAICompatibleBackend(f"{url}/v1", "simulated-llama-2-7b-chat")


def chat(text: str) -> Request:
    return Request(messages=(("user", text),), params=SamplingParams(max_tokens=32))


async def control(backend: OpenAICompatibleBackend, **body) -> dict:
    return await backend.post_to_server("/sim/batches", body, 30)


async def finished(transport: BatchTransport, batch_id: str) -> dict:
    status: dict = {}

    async def done() -> bool:
        status.update(await transport.retrieve(batch_id))
        return status["status"] in ("completed", "failed", "expired", "cancelled")

    assert await wait_until_async(done)
    return status


async def test_simulated_batch_api_files_batches_output_and_error_files():
    async with SimulatedServer(server_config()) as server:
        backend = backend_for(server.url)
        transport = BatchTransport(backend)
        try:
            await control(backend, fail_every=3)
            lines = [request_line(f"r{i}", chat(f"question {i}"), backend.model) for i in range(6)]
            file_id = await transport.upload(lines, "in.jsonl")
            assert (await backend.api_call("GET", f"/files/{file_id}"))["purpose"] == "batch"
            created = await transport.create(file_id, "/v1/chat/completions")
            assert created["status"] in ("validating", "in_progress")
            assert created["completion_window"] == "24h"
            status = await finished(transport, created["id"])
            assert status["status"] == "completed"
            assert status["request_counts"] == {"total": 6, "completed": 4, "failed": 2}
            output = await transport.lines(status["output_file_id"])
            errors = await transport.lines(status["error_file_id"])
            assert sorted(line["custom_id"] for line in output) == ["r0", "r1", "r3", "r4"]
            assert sorted(line["custom_id"] for line in errors) == ["r2", "r5"]
            for line in output:
                assert line["id"].startswith("batch_req_") and line["error"] is None
                assert line["response"]["status_code"] == 200
                answer = parse_result_line(line, 1)
                assert isinstance(answer, Completion) and answer.prompt_tokens > 0
            assert errors[0]["response"]["status_code"] == 500
            assert isinstance(parse_result_line(errors[0], 1), str)

            # An expired batch answers its first half; the rest are batch_expired errors.
            await control(backend, fail_every=0, expire_next=1)
            created = await transport.create(
                await transport.upload(lines, "again.jsonl"), "/v1/chat/completions"
            )
            status = await finished(transport, created["id"])
            assert status["status"] == "expired"
            expired = await transport.lines(status["error_file_id"])
            assert len(await transport.lines(status["output_file_id"])) == 3
            assert {line["error"]["code"] for line in expired} == {"batch_expired"}

            # A held batch stays in progress and can be cancelled.
            await control(backend, hold=True)
            created = await transport.create(
                await transport.upload(lines, "c.jsonl"), "/v1/chat/completions"
            )
            assert (await transport.retrieve(created["id"]))["status"] == "in_progress"
            cancelled = await transport.cancel(created["id"])
            assert cancelled["status"] == "cancelled"
            assert cancelled["request_counts"]["failed"] == 6
        finally:
            await backend.close()


async def run_batched(url: str, tmp_path, prompts: list[str], settings: BatchSettings, **ctl):
    backend = backend_for(url)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    ledger = Ledger(PriceTable({"simulated-llama-2-7b-chat": ModelPrice(2.0, 8.0)}))
    engine = Engine(backend, cache=cache, ledger=ledger)
    runner = BatchRunner(
        BatchTransport(backend), tmp_path, cache=cache, ledger=ledger, settings=settings
    )
    runner.start()
    engine.batch = runner
    if ctl:
        await control(backend, **ctl)
    async with engine:
        results = await engine.generate_many([chat(p) for p in prompts])
    return results, ledger, cache, engine


async def test_runner_resubmits_failed_and_expired_lines_until_every_answer_is_in(tmp_path):
    # 30 lines: 15 expire and 3 fail, then 4 of the 18, 1 of the 4, none of the last one.
    prompts = [f"prompt {i}" for i in range(30)]
    settings = BatchSettings(gather_s=0.05, poll_first_s=0.02, poll_max_s=0.05, max_attempts=4)
    async with SimulatedServer(server_config()) as server:
        results, ledger, cache, engine = await run_batched(
            server.url, tmp_path, prompts, settings, fail_every=4, expire_next=1
        )
    assert all(isinstance(result, Completion) for result in results)
    row = ledger.snapshot()["rows"][0]
    assert row["requests"] == row["batch_requests"] == 30  # each answer charged once
    assert row["failures"] == {}
    for prompt in prompts:
        key = request_key(engine.backend.identity, chat(prompt))
        assert cache.get(key) is not None
    assert (tmp_path / STATE_FILE).exists()


async def test_runner_reports_lines_still_failing_after_its_attempts(tmp_path):
    settings = BatchSettings(gather_s=0.05, poll_first_s=0.02, poll_max_s=0.05, max_attempts=1)
    async with SimulatedServer(server_config()) as server:
        results, ledger, _, _ = await run_batched(
            server.url, tmp_path, [f"p{i}" for i in range(8)], settings, fail_every=2
        )
    failed = [r for r in results if isinstance(r, RequestFailed)]
    assert len(failed) == 4 and all(f.kind == "batch" for f in failed)
    assert "HTTP 500" in failed[0].reason
    row = ledger.snapshot()["rows"][0]
    assert row["batch_requests"] == 4 and row["failures"] == {"batch": 4}


def test_ledger_bills_batch_answers_at_half_price_to_the_cent():
    ledger = Ledger(PriceTable({"m": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0)}))
    ledger.record_answer("m", "scoring", 1_000_000, 200_000)
    ledger.record_answer("m", "scoring", 2_000_000, 400_000, billing="batch")
    # standard: 3.00 + 3.00 = 6.00; batch: (6.00 + 6.00) / 2 = 6.00
    assert ledger.snapshot()["totals"]["cost_usd"] == pytest.approx(12.00, abs=0.005)
    assert ledger.snapshot()["rows"][0]["batch_requests"] == 1


async def test_resume_finds_a_batch_created_just_before_a_kill_and_submits_one_never_created(
    tmp_path,
):
    """A kill between creating a batch and recording its id leaves it "submitting": the resume
    follows the batch the endpoint has (by its metadata), submits the one it never got, and no
    request is sent twice."""
    first = [f"first {i}" for i in range(5)]
    second = [f"second {i}" for i in range(4)]
    async with SimulatedServer(server_config()) as server:
        backend = backend_for(server.url)
        transport = BatchTransport(backend)
        identity = backend.identity
        entries = []
        (tmp_path / "batch-inputs").mkdir()
        for number, prompts in enumerate((first, second)):
            lines = [
                request_line(request_key(identity, chat(p)).hex(), chat(p), backend.model)
                for p in prompts
            ]
            name = f"batch-input-{number}.jsonl"
            (tmp_path / "batch-inputs" / name).write_bytes(
                b"".join(orjson.dumps(line) + b"\n" for line in lines)
            )
            if number == 0:  # the endpoint got this one; the process died before noting its id
                file_id = await transport.upload(lines, name)
                await transport.create(file_id, "/v1/chat/completions", {"gpo_input": name})
            entries.append(
                {
                    "id": None,
                    "endpoint": "/v1/chat/completions",
                    "input": f"batch-inputs/{name}",
                    "phase": "scoring",
                    "attempt": 1,
                    "state": "submitting",
                }
            )
        await backend.close()
        (tmp_path / STATE_FILE).write_bytes(orjson.dumps({"batches": entries}))
        results, ledger, _, _ = await run_batched(server.url, tmp_path, first + second, FAST)
        backend = backend_for(server.url)
        try:
            batches = await control(backend)
        finally:
            await backend.close()
    assert all(isinstance(result, Completion) for result in results)
    assert len(batches) == 2
    assert sum(b["request_counts"]["total"] for b in batches.values()) == len(first + second)
    row = ledger.snapshot()["rows"][0]
    assert row["requests"] == row["batch_requests"] == len(first + second)
    states = orjson.loads((tmp_path / STATE_FILE).read_bytes())["batches"]
    assert [entry["state"] for entry in states] == ["collected", "collected"]
