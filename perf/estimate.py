"""The estimate check (`bench.py --check-estimate`): estimate a small GPO run dry, run it against
the simulated server in API mode (rate limits on, prefix cache on, cached prompt tokens reported
in usage), and compare the estimate with the engines' ledgers: tokens, cached prompt tokens and
dollars at a hosted price with a cached-input discount."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import Task
from engine.evaluator import FIRST_TURN_PARAMS
from perf.contenders.base import run_async
from perf.engines import open_estimate_engines
from perf.servers import answer_key_for

CHECK_STEPS = 4
CHECK_CANDIDATES = 8
CHECK_DEV = 24
CHECK_TEST = 48
CHECK_PRICE = (2.50, 10.00, 1.25)
"""Input, output and cached-input dollars per million tokens the check bills at (gpt-4o's)."""
CHECK_TIME_SCALE = 400.0
"""Simulated seconds per real second: the step model (and its prefix cache) runs, quickly."""


@dataclass(frozen=True, slots=True)
class EstimateCheck:
    estimated: dict[str, float]
    measured: dict[str, float]
    billed_usd: float | None = None
    """The bill of the usage the server reported (prompt, cached, completion tokens), which the
    ledger's dollars (`measured["usd"]`) must equal to the cent."""

    def error(self, key: str) -> float:
        measured = self.measured[key]
        return (self.estimated[key] - measured) / measured if measured else 0.0

    def within(self, tolerance: float) -> bool:
        return all(
            abs(self.error(k)) <= tolerance for k in ("scorer_tokens", "total_tokens", "usd")
        )

    def describe(self) -> str:
        parts = []
        for key in (
            "scorer_calls",
            "optimizer_calls",
            "scorer_tokens",
            "optimizer_tokens",
            "total_tokens",
            "cached_prompt_tokens",
            "usd",
        ):
            if key not in self.measured:
                continue
            shown = "{:,.4f}" if key == "usd" else "{:,.0f}"
            parts.append(
                f"{key} {shown.format(self.estimated[key])} vs {shown.format(self.measured[key])} "
                f"({100 * self.error(key):+.1f}%)"
            )
        if self.billed_usd is not None:
            parts.append(f"server's usage billed {self.billed_usd:,.4f}")
        return "; ".join(parts)


def check_estimate(task: Task, batch: bool = False) -> EstimateCheck:
    """Estimate a small GPO run dry, run it against the simulated server, compare with the ledger.

    Scorer and optimizer are both the simulated server in API mode with its prefix cache (time
    scaled so the run is quick); the estimate uses the server's tokenizer, its expected output
    lengths and its cache's block size. `batch`: the test evaluations go through the Batch API
    (estimated and billed at batch prices).
    """
    from backends.simulated import SimulatedServerConfig, start_server_process
    from backends.simulated.config import RateLimits
    from backends.simulated.tokens import count_tokens
    from engine.prices import ModelPrice, PriceTable
    from gpo.cache_estimate import PromptCacheRule
    from gpo.config import OptimizerConfig
    from gpo.cost_estimate import estimate_for_config, expected_output_tokens

    config = OptimizerConfig(
        steps=CHECK_STEPS,
        candidates=CHECK_CANDIDATES,
        dev_size=CHECK_DEV,
        test_size=CHECK_TEST,
    )
    server_config = SimulatedServerConfig(
        time_scale=CHECK_TIME_SCALE,
        batch_delay_s=1.0,
        rate_limits=RateLimits(requests_per_minute=1_000_000, tokens_per_minute=1_000_000_000),
    )
    input_price, output_price, cached_price = CHECK_PRICE
    price = ModelPrice(input_price, output_price, cached_input_per_mtok=cached_price)
    estimate = estimate_for_config(
        task,
        config,
        tokenizer=count_tokens,
        first_turn_output_tokens=expected_output_tokens(
            server_config.output_lengths, FIRST_TURN_PARAMS.max_tokens
        ),
        chat_template="chatml",
        scorer_model=server_config.model,
        optimizer_model=server_config.model,
        prices=PriceTable({server_config.model: price}),
        prompt_cache=PromptCacheRule(block_tokens=server_config.block_size, min_tokens=0),
        batch=batch,
    )
    with start_server_process(server_config, answer_key=answer_key_for(task)) as server:
        ledgers = _run_optimization(
            task, config, f"{server.url}/v1", server_config.model, price, batch=batch
        )
        # The server's usage counters cover its ordinary answers, not its batch lines.
        billed = None if batch else _server_bill(server.metrics(), price)
    scorer, optimizer = ledgers
    measured = {
        "scorer_calls": scorer["requests"],
        "optimizer_calls": optimizer["requests"],
        "scorer_tokens": scorer["total_tokens"],
        "optimizer_tokens": optimizer["total_tokens"],
        "total_tokens": scorer["total_tokens"] + optimizer["total_tokens"],
        "cached_prompt_tokens": scorer["cached_prompt_tokens"] + optimizer["cached_prompt_tokens"],
        "usd": scorer["cost_usd"] + optimizer["cost_usd"],
    }
    estimated = {
        "scorer_calls": estimate.scorer_calls,
        "optimizer_calls": estimate.optimizer_calls,
        "scorer_tokens": estimate.scorer_prompt_tokens + estimate.scorer_completion_tokens,
        "optimizer_tokens": estimate.optimizer_prompt_tokens + estimate.optimizer_completion_tokens,
        "total_tokens": estimate.prompt_tokens + estimate.completion_tokens,
        "cached_prompt_tokens": estimate.cached_prompt_tokens,
        "usd": estimate.usd or 0.0,
    }
    return EstimateCheck(estimated, measured, billed)


def _server_bill(samples: Any, price: Any) -> float:
    """Dollars of the usage the server reported in its answers, from its /metrics counters."""
    from backends.simulated.metrics import metric_total

    prompt = metric_total(samples, "sim_prompt_tokens_served_total")
    cached = metric_total(samples, "sim_cached_prompt_tokens_served_total")
    completion = metric_total(samples, "sim_completion_tokens_served_total")
    return price.token_cost(prompt, completion, cached)


def _run_optimization(
    task: Task, config: Any, base_url: str, model: str, price: Any, *, batch: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    import argparse
    import tempfile

    from engine.evaluator import Evaluator
    from gpo.batch_flags import attach_batch_runner
    from gpo.embedders import EmbedderConfig, make_embedder
    from gpo.optimizer import PromptOptimizer

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        embedder = make_embedder(EmbedderConfig())
        async with open_estimate_engines(base_url, model) as (scorer, optimizer):
            for engine in (scorer, optimizer):
                engine.ledger.prices.set(model, price)
            if batch:  # the test evaluations through the Batch API, as `--batch-api` sends them
                flags = argparse.Namespace(
                    batch_api="api", batch_poll_max=0.2, batch_timeout=600.0, batch_attempts=3
                )
                attach_batch_runner(flags, scorer, Path(batch_dir), all_requests=False)
            loop = PromptOptimizer(
                config, evaluator=Evaluator(scorer), optimizer=optimizer, embedder=embedder
            )
            await loop.run(task)
        await embedder.close()
        return scorer.ledger.snapshot()["totals"], optimizer.ledger.snapshot()["totals"]

    with tempfile.TemporaryDirectory(prefix="gpo-estimate-batch-") as batch_dir:
        return run_async(main(), uvloop_loop=True)
