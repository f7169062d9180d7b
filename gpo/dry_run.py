"""`gpo optimize --dry-run` and `gpo eval --dry-run`: the expected calls, tokens and dollars of
a run, before any call.

Dollars count the prompt tokens a hosted provider's prompt cache is expected to serve (at the
price table's cached-input rate, OpenAI's caching rule) and, with `--batch-api`, the test
evaluations at Batch API prices.
"""

from __future__ import annotations

import argparse
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks import load_task
from engine.prices import PriceTable
from gpo.cost_estimate import CostEstimate, estimate_evaluation_cost, estimate_for_config
from gpo.runner import RunSpec


def estimate_run(spec: RunSpec, args: argparse.Namespace) -> dict[str, CostEstimate]:
    """One estimate per task of the run, with the scorer's layout and token limits."""
    prices = PriceTable.from_file(args.prices) if getattr(args, "prices", None) else PriceTable()
    options: dict[str, Any] = {
        "layout": spec.scoring.layout,
        "first_turn_max_tokens": spec.scoring.first_turn.max_tokens,
        "follow_up_max_tokens": spec.scoring.follow_up.max_tokens,
        # No template named: a hosted chat endpoint, counted with its per-message overhead.
        "chat_template": getattr(args, "scorer_chat_template", None),
        "optimizer_chat_template": getattr(args, "optimizer_chat_template", None),
        "scorer_model": getattr(args, "scorer_model", None),
        "optimizer_model": getattr(args, "optimizer_model", None),
        "prices": prices,
        "batch": bool(getattr(args, "batch_api", False)),
    }
    return {
        name: estimate_for_config(load_task(name, spec.data_dir), spec.optimizer, **options)
        for name in spec.tasks
    }


def estimate_eval(job: Any, args: argparse.Namespace) -> dict[str, CostEstimate]:
    """One estimate per task of a `gpo eval` job (a `gpo.eval_job.EvalJob`)."""
    prices = PriceTable.from_file(args.prices) if getattr(args, "prices", None) else PriceTable()
    settings = job.settings
    return {
        name: estimate_evaluation_cost(
            load_task(name, job.data_dir),
            prompts,
            splits=job.splits,
            limit=job.limit,
            layout=settings.layout,
            first_turn_max_tokens=settings.first_turn.max_tokens,
            follow_up_max_tokens=settings.follow_up.max_tokens,
            chat_template=getattr(args, "scorer_chat_template", None),
            scorer_model=getattr(args, "scorer_model", None),
            prices=prices,
            batch=bool(getattr(args, "batch_api", False)),
        )
        for name, prompts in job.prompts_by_task.items()
    }


def print_estimates(estimates: dict[str, CostEstimate]) -> None:
    table = Table(title="Dry run: expected cost (no request sent)")
    columns = (
        "task",
        "scorer calls",
        "optimizer calls",
        "prompt tokens",
        "cached",
        "completion tokens",
        "$",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "task" else "right", no_wrap=True)
    for name, estimate in estimates.items():
        table.add_row(
            name,
            f"{estimate.scorer_calls:,}",
            f"{estimate.optimizer_calls:,}",
            f"{estimate.prompt_tokens:,}",
            f"{estimate.cached_prompt_tokens:,}",
            f"{estimate.completion_tokens:,}",
            "unpriced" if estimate.usd is None else f"{estimate.usd:.4f}",
        )
    if len(estimates) > 1:
        values = list(estimates.values())
        priced = [e.usd for e in values if e.usd is not None]
        table.add_row(
            "total",
            f"{sum(e.scorer_calls for e in values):,}",
            f"{sum(e.optimizer_calls for e in values):,}",
            f"{sum(e.prompt_tokens for e in values):,}",
            f"{sum(e.cached_prompt_tokens for e in values):,}",
            f"{sum(e.completion_tokens for e in values):,}",
            f"{sum(priced):.4f}" if len(priced) == len(values) else "unpriced",
        )
    Console().print(table)
    Console().print(
        "Completion lengths are expectations (first answers ~150 tokens, capped by --max-tokens); "
        "a model that writes longer or shorter answers moves the figures. Cached prompt tokens "
        "follow OpenAI's rule (prompts of 1,024+ tokens, 128-token steps) and are billed at the "
        "price table's cached_input_per_mtok (the input price where the table has none)"
        + ("; test evaluations at Batch API prices." if _batched(estimates) else ".")
    )


def _batched(estimates: dict[str, CostEstimate]) -> bool:
    return any(estimate.batch for estimate in estimates.values())
