"""The dry-run estimate prices cached prompt tokens and Batch API calls, and matches the ledger of
a run on the simulated server in API mode with its prefix cache on (bench.py --check-estimate)."""

from __future__ import annotations

import pytest

from benchmarks import load_task
from engine.prices import ModelPrice, PriceTable
from gpo.cache_estimate import NO_CACHE, OPENAI_CACHE, VLLM_CACHE, PromptCacheRule
from gpo.cost_estimate import estimate_optimization_cost

PRICES = PriceTable({"m": ModelPrice(2.0, 8.0, cached_input_per_mtok=0.5)})


def estimate(**options):
    settings = {
        "steps": 2,
        "candidates": 4,
        "dev_size": 8,
        "test_size": 8,
        "scorer_model": "m",
        "optimizer_model": "m",
        "prices": PRICES,
        "prompt_cache": VLLM_CACHE,
    }
    settings.update(options)
    return estimate_optimization_cost(load_task("bbh/navigate"), **settings)


def test_cache_rule_counts_whole_steps_past_the_threshold_and_never_the_last_token():
    assert OPENAI_CACHE.cached(5_000, 1_000) == 0  # under 1,024 tokens: never cached
    assert OPENAI_CACHE.cached(1_300, 2_000) == 1_280
    assert OPENAI_CACHE.cached(2_000, 2_000) == 1_920  # the last token is computed
    assert PromptCacheRule(16, 0).cached(100, 101) == 96


def test_cached_tokens_lower_the_estimate_at_the_cached_price():
    uncached = estimate(prompt_cache=NO_CACHE)
    cached = estimate()
    assert uncached.cached_prompt_tokens == 0
    # second turns repeat their first turn: most of a two-turn task's prompt is cached
    assert cached.cached_prompt_tokens > 0.3 * cached.prompt_tokens
    assert cached.prompt_tokens == uncached.prompt_tokens
    saving = cached.cached_prompt_tokens * (2.0 - 0.5) / 1e6
    assert cached.usd == pytest.approx(uncached.usd - saving, rel=1e-6)
    # bbh/navigate's prompts are short: OpenAI caches none of them
    assert estimate(prompt_cache=OPENAI_CACHE).cached_prompt_tokens == 0


def test_batch_prices_the_test_evaluations_at_half():
    only_test = {"steps": 0, "candidates": 0, "dev_size": 0, "test_prompts": 2}
    listed = estimate(**only_test)
    batched = estimate(**only_test, batch=True)
    assert listed.usd > 0 and batched.batch
    assert batched.usd == pytest.approx(listed.usd / 2, rel=1e-9)
    # dev scoring and the optimizer stay at list prices
    full, full_batched = estimate(), estimate(batch=True)
    assert listed.usd / 2 == pytest.approx(full.usd - full_batched.usd, rel=1e-6)


def test_check_estimate_is_within_ten_percent_of_the_ledger_dollars_with_caching_on():
    from perf.estimate import check_estimate

    check = check_estimate(load_task("bbh/navigate"))
    assert check.measured["cached_prompt_tokens"] > 0.3 * check.measured["total_tokens"]
    assert abs(check.error("usd")) <= 0.10, check.describe()
    assert abs(check.error("cached_prompt_tokens")) <= 0.10, check.describe()
    assert check.within(0.10)
    # The whole run's ledger costs the bill of the usage the server reported, to the cent.
    assert check.billed_usd is not None and check.billed_usd > 0
    assert round(check.measured["usd"], 2) == round(check.billed_usd, 2)
    assert check.measured["usd"] == pytest.approx(check.billed_usd, abs=1e-6)


def test_check_estimate_is_within_ten_percent_with_caching_and_batching_on():
    """The test evaluations go through the simulated Batch API at the batch price."""
    from perf.estimate import check_estimate

    plain = check_estimate(load_task("bbh/navigate"))
    batched = check_estimate(load_task("bbh/navigate"), batch=True)
    assert abs(batched.error("usd")) <= 0.10, batched.describe()
    assert batched.measured["cached_prompt_tokens"] > 0
    # the batch price really was charged: the same run costs less than at list prices
    assert batched.measured["usd"] < plain.measured["usd"] - 0.01


def test_eval_dry_run_counts_every_chain_and_sends_nothing():
    import subprocess
    import sys
    from pathlib import Path

    import orjson

    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "gpo", "eval", "--task", "bbh/navigate", "--limit", "8"]
    command += ["--prompt", "Think.", "--prompt", "Answer.", "--dry-run", "--json"]
    # A scorer URL where nothing listens: a dry run must not call it.
    command += ["--scorer-url", "http://127.0.0.1:9/v1", "--scorer-model", "gpt-4o-mini"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    payload = orjson.loads(done.stdout)
    assert payload["status"] == "dry_run"
    estimate = payload["estimates"]["bbh/navigate"]
    # two prompts on 8 test samples, two chat turns each
    assert estimate["scorer_calls"] == 2 * 8 * 2 and estimate["optimizer_calls"] == 0
    assert estimate["usd"] > 0 and estimate["cached_prompt_tokens"] >= 0
