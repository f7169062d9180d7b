"""The Batch API's local form (`--batch-api local`): the same JSONL through a run-batch command
(here a stand-in, `tests/fake_run_batch.py`, with vLLM's output format), answers into cache and
ledger at the batch price; a run killed while the command runs finds it on resume by its pid and
collects its output without running it again."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Completion, Request, SamplingParams
from backends.vllm_run_batch import LocalRunBatch
from engine.batch_api import STATE_FILE, BatchRunner, BatchSettings
from engine.cache import ResponseCache
from engine.engine import Engine
from engine.ledger import Ledger
from tests.waiting import wait_until_async

FAKE = str(Path(__file__).with_name("fake_run_batch.py"))
SETTINGS = BatchSettings(gather_s=0.05, poll_first_s=0.02, poll_max_s=0.05, timeout_s=120)


def chat(text: str) -> Request:
    return Request(messages=(("user", text),), params=SamplingParams(max_tokens=16))


def batched_engine(tmp_path: Path, *extra: str) -> tuple[Engine, Ledger, LocalRunBatch]:
    # Never called: every request goes through the local batch command.
    backend = OpenAICompatibleBackend("http://127.0.0.1:9/v1", "local-model")
    ledger = Ledger()
    cache = ResponseCache(tmp_path / "cache.sqlite")
    engine = Engine(backend, cache=cache, ledger=ledger)
    transport = LocalRunBatch([sys.executable, FAKE, *extra], tmp_path / "batch-local", "m")
    runner = BatchRunner(transport, tmp_path, cache=cache, ledger=ledger, settings=SETTINGS)
    runner.start()
    engine.batch = runner
    return engine, ledger, transport


async def test_local_run_batch_answers_every_request_at_the_batch_price(tmp_path):
    engine, ledger, _ = batched_engine(tmp_path)
    prompts = [f"q{i}" for i in range(12)]
    async with engine:
        results = await engine.generate_many([chat(p) for p in prompts])
    assert [r.text for r in results if isinstance(r, Completion)] == [
        f"answer: {p}" for p in prompts
    ]
    (row,) = ledger.snapshot()["rows"]
    assert row["requests"] == row["batch_requests"] == 12
    assert row["prompt_tokens"] == 120


async def test_local_batch_running_when_killed_is_collected_on_resume_not_run_again(tmp_path):
    release = tmp_path / "release"
    prompts = [f"q{i}" for i in range(5)]
    first, _, _ = batched_engine(tmp_path, "--wait-for", str(release))
    async with first:
        asking = [first.generate(chat(p)) for p in prompts]
        pending = asyncio.gather(*asking, return_exceptions=True)

        def recorded() -> bool:
            try:
                entries = orjson.loads((tmp_path / STATE_FILE).read_bytes())["batches"]
            except (OSError, orjson.JSONDecodeError):
                return False
            return any(entry["state"] == "pending" for entry in entries)

        assert await wait_until_async(recorded)
    await pending  # the first process "dies": its engine closed, its batch command still runs
    release.write_text("go")
    second, ledger, _ = batched_engine(tmp_path, "--wait-for", str(release))
    async with second:
        results = await second.generate_many([chat(p) for p in prompts])
    assert all(isinstance(r, Completion) for r in results)
    assert len(list((tmp_path / "batch-local").glob("local-*.json"))) == 1  # one run only
    (row,) = ledger.snapshot()["rows"]
    assert row["batch_requests"] == 5
