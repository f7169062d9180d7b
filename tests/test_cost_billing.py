"""Dollars as hosted APIs bill them: cached-input, reasoning and batch tokens, checked to the cent
against bills computed by hand, for single calls and for a whole run on the simulated server."""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Capabilities, Request, SamplingParams
from backends.simulated import SimulatedServer, SimulatedServerConfig
from backends.simulated.config import RateLimits
from backends.simulated.metrics import metric_total, parse_prometheus
from engine.cache import ResponseCache
from engine.engine import Engine, EngineConfig, RequestFailed
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from tests.scripted_server import ScriptedServer

PRICE = ModelPrice(2.00, 8.00, cached_input_per_mtok=0.50)
"""$2 / $8 per million input / output tokens, $0.50 cached; batch: half of each by default."""


def ledger_with_four_calls() -> Ledger:
    ledger = Ledger(PriceTable({"m": PRICE}))
    # plain: 10,000 in, 2,000 out
    ledger.record_answer("m", "scoring", 10_000, 2_000)
    # cached: 100,000 in of which 80,000 cached, 5,000 out
    ledger.record_answer("m", "scoring", 100_000, 5_000, 80_000)
    # reasoning: 1,000 in, 30,000 out of which 25,000 reasoning (billed as output)
    ledger.record_answer("m", "optimizing", 1_000, 30_000, reasoning_tokens=25_000)
    # batch: 200,000 in of which 50,000 cached, 10,000 out
    ledger.record_answer("m", "testing", 200_000, 10_000, 50_000, billing="batch")
    return ledger


def test_plain_cached_reasoning_and_batch_calls_cost_the_hand_computed_bill():
    plain = 10_000 * 2.00 / 1e6 + 2_000 * 8.00 / 1e6  # $0.036
    cached = 20_000 * 2.00 / 1e6 + 80_000 * 0.50 / 1e6 + 5_000 * 8.00 / 1e6  # $0.12
    reasoning = 1_000 * 2.00 / 1e6 + 30_000 * 8.00 / 1e6  # $0.242
    batch = 150_000 * 1.00 / 1e6 + 50_000 * 0.25 / 1e6 + 10_000 * 4.00 / 1e6  # $0.2025
    assert round(plain + cached + reasoning + batch, 4) == 0.6005
    snapshot = ledger_with_four_calls().snapshot()
    assert round(snapshot["totals"]["cost_usd"], 2) == 0.60
    assert snapshot["totals"]["cost_usd"] == pytest.approx(0.6005, abs=1e-9)
    rows = {row["phase"]: row for row in snapshot["rows"]}
    assert rows["scoring"]["cost_usd"] == pytest.approx(plain + cached, abs=1e-9)
    assert rows["optimizing"]["cost_usd"] == pytest.approx(reasoning, abs=1e-9)
    assert rows["testing"]["cost_usd"] == pytest.approx(batch, abs=1e-9)
    # Shown per phase: the cached and reasoning shares, and what went through a Batch API.
    assert rows["scoring"]["cached_prompt_tokens"] == 80_000
    assert rows["optimizing"]["reasoning_tokens"] == 25_000
    assert rows["testing"]["batch_prompt_tokens"] == 200_000
    assert rows["testing"]["batch_cached_prompt_tokens"] == 50_000
    totals = snapshot["totals"]
    assert (totals["cached_prompt_tokens"], totals["reasoning_tokens"]) == (130_000, 25_000)
    assert totals["prompt_tokens"] == 311_000


def test_price_table_file_takes_the_new_columns_and_defaults_them(tmp_path):
    path = tmp_path / "prices.json"
    path.write_bytes(
        orjson.dumps(
            {
                "mine": {"input_per_mtok": 1.0, "output_per_mtok": 3.0},
                "theirs": {
                    "input_per_mtok": 1.0,
                    "output_per_mtok": 3.0,
                    "cached_input_per_mtok": 0.1,
                    "batch_input_per_mtok": 0.6,
                    "batch_output_per_mtok": 2.0,
                    "batch_cached_input_per_mtok": 0.05,
                },
            }
        )
    )
    table = PriceTable.from_file(path)
    # Unknown cached price: the input price (no discount assumed); batch: half the list price.
    assert table.price("mine").rates() == (1.0, 1.0, 3.0)
    assert table.price("mine").rates("batch") == (0.5, 0.5, 1.5)
    assert table.price("theirs").rates() == (1.0, 0.1, 3.0)
    assert table.price("theirs").rates("batch") == (0.6, 0.05, 2.0)
    # Built-in models carry their provider's cached price.
    assert table.price("gpt-4o-mini-2024-07-18").rates()[1] == 0.075


async def test_client_reads_cached_and_reasoning_tokens_and_splits_them_over_a_prompt_list():
    server = ScriptedServer()
    url = await server.start()
    usage = {
        "prompt_tokens": 2_000,
        "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1_536},
        "completion_tokens_details": {"reasoning_tokens": 256},
    }

    def answer(texts: int):
        def respond(body):
            from aiohttp import web

            choices = [{"index": i, "text": f"a{i}", "finish_reason": "stop"} for i in range(texts)]
            return web.Response(
                body=orjson.dumps({"choices": choices, "usage": usage}),
                content_type="application/json",
            )

        return respond

    server.script.extend([answer(1), answer(3)])
    backend = OpenAICompatibleBackend(url, "scripted-model")
    try:
        (one,) = await backend.complete(["p"], SamplingParams())
        assert (one.cached_prompt_tokens, one.reasoning_tokens) == (1_536, 256)
        three = await backend.complete(["aa", "bb", "cc"], SamplingParams())
        assert sum(c.cached_prompt_tokens for c in three) == 1_536
        assert sum(c.reasoning_tokens for c in three) == 256
        assert all(c.cached_prompt_tokens <= c.prompt_tokens for c in three)
    finally:
        await backend.close()
        await server.stop()


async def test_cache_keeps_cached_and_reasoning_tokens(tmp_path):
    from backends.protocol import Completion

    cache = ResponseCache(tmp_path / "c.sqlite")
    try:
        cache.put_many([(b"k", Completion(("x",), 10, 5, ("stop",), False, 8, 3))])
        hit = cache.get(b"k")
    finally:
        cache.close()
    assert (hit.cached_prompt_tokens, hit.reasoning_tokens) == (8, 3)


async def _server_counter(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        return metric_total(parse_prometheus(await response.text()), name)


async def test_whole_run_on_the_simulated_api_costs_the_bill_of_the_servers_usage():
    """API mode (rate limits on), prefix cache on: the ledger's dollars equal, to the cent, the
    bill computed from what the server reported in usage (prompt, cached, completion)."""
    config = SimulatedServerConfig(
        time_scale=200.0,
        rate_limits=RateLimits(requests_per_minute=100_000, tokens_per_minute=50_000_000),
    )
    shared = "You are a careful grader. " * 40  # ~250 tokens: many full cache blocks
    prompts = [f"{shared}\nQuestion {i}: how many legs has a spider?" for i in range(120)]
    price = ModelPrice(3.00, 12.00, cached_input_per_mtok=0.75)
    async with SimulatedServer(config) as server:
        backend = OpenAICompatibleBackend(
            f"{server.url}/v1", config.model, capabilities=Capabilities(max_concurrency=64)
        )
        engine = Engine(backend, EngineConfig(max_retries=12, backoff_base_s=0.02))
        engine.ledger.prices.set(config.model, price)
        async with engine:
            answers = await engine.generate_many(
                [Request(prompt=p, params=SamplingParams(max_tokens=16)) for p in prompts]
            )
        assert not [a for a in answers if isinstance(a, RequestFailed)]
        prompt = await _server_counter(server.url, "sim_prompt_tokens_served_total")
        cached = await _server_counter(server.url, "sim_cached_prompt_tokens_served_total")
        completion = await _server_counter(server.url, "sim_completion_tokens_served_total")
    assert cached > 0.5 * prompt  # the shared preamble is served from the prefix cache
    bill = ((prompt - cached) * 3.00 + cached * 0.75 + completion * 12.00) / 1e6
    totals = engine.ledger.snapshot()["totals"]
    assert totals["cached_prompt_tokens"] == cached
    assert round(totals["cost_usd"], 2) == round(bill, 2)
    assert totals["cost_usd"] == pytest.approx(bill, abs=1e-6)


def test_reports_show_cached_and_reasoning_tokens_per_phase():
    from gpo.json_output import cost_block
    from gpo.ledger_view import of_which

    snapshot = ledger_with_four_calls().snapshot()
    block = cost_block(snapshot["totals"], [snapshot])
    assert block["cached_prompt_tokens"] == 130_000 and block["reasoning_tokens"] == 25_000
    assert block["by_phase"]["scoring"]["cached_prompt_tokens"] == 80_000
    assert block["by_phase"]["optimizing"]["reasoning_tokens"] == 25_000
    assert block["by_phase"]["testing"]["batch_prompt_tokens"] == 200_000
    line = of_which(snapshot["totals"])
    assert "130,000 cached" in line and "25,000 reasoning" in line
