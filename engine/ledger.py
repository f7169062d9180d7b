"""The ledger: what a run spent and saved, per model and per phase (e.g. scoring, optimizing).

Counts requests (sequences the server generated), HTTP calls, prompt and completion tokens, cache
hits and the tokens they saved (a hit costs nothing: its usage is counted as saved, never as
spent), retries, failures by kind, 429s, and latency percentiles. Dollars come from a
`PriceTable`: tokens for hosted models, GPU-hours of wall time for local servers.

Of the prompt tokens, those the server served from its prompt cache (`cached_prompt_tokens`) are
priced at the table's cached-input rate; of the completion tokens, the reasoning tokens are
billed as output but counted apart. A call sent through a Batch API is recorded with
`billing="batch"`: its tokens count in the same totals and also under `batch_*`, and are priced
at the table's batch rates.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from engine.latency import LatencyHistogram
from engine.prices import BILLINGS, PriceTable


@dataclass(slots=True)
class UsageCounters:
    requests: int = 0
    http_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    reasoning_tokens: int = 0
    batch_requests: int = 0
    batch_prompt_tokens: int = 0
    batch_cached_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    cache_hits: int = 0
    deduplicated: int = 0
    saved_prompt_tokens: int = 0
    saved_completion_tokens: int = 0
    retries: int = 0
    rate_limited: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class Ledger:
    """Accumulates usage; `snapshot()` gives a JSON-able summary with dollars."""

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or PriceTable()
        self._counters: dict[tuple[str, str], UsageCounters] = {}
        self._started = time.monotonic()
        self._stopped: float | None = None
        self._earlier_tokens = 0
        self._earlier_usd = 0.0

    def carry_over(self, tokens: int, usd: float) -> None:
        """Count what earlier sessions of the run spent against its budgets."""
        self._earlier_tokens += max(0, int(tokens))
        self._earlier_usd += max(0.0, float(usd))

    def counters(self, model: str, phase: str) -> UsageCounters:
        key = (model, phase)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = UsageCounters()
        return counters

    def record_answer(
        self,
        model: str,
        phase: str,
        prompt_tokens: int,
        completion_tokens: int,
        cached_prompt_tokens: int = 0,
        reasoning_tokens: int = 0,
        *,
        billing: str = "standard",
    ) -> None:
        """One answer's usage; `cached_prompt_tokens` are part of `prompt_tokens`,
        `reasoning_tokens` of `completion_tokens`; `billing="batch"`: sent through a Batch API."""
        if billing not in BILLINGS:
            raise ValueError(f"billing {billing!r} is not one of {', '.join(BILLINGS)}")
        cached_prompt_tokens = min(max(0, cached_prompt_tokens), prompt_tokens)
        c = self.counters(model, phase)
        c.requests += 1
        c.prompt_tokens += prompt_tokens
        c.completion_tokens += completion_tokens
        c.cached_prompt_tokens += cached_prompt_tokens
        c.reasoning_tokens += max(0, reasoning_tokens)
        if billing == "batch":
            c.batch_requests += 1
            c.batch_prompt_tokens += prompt_tokens
            c.batch_cached_prompt_tokens += cached_prompt_tokens
            c.batch_completion_tokens += completion_tokens

    def record(self, model: str, phase: str, completion: Any, *, billing: str = "standard") -> None:
        """One answer's usage from a `backends.protocol.Completion` (see `record_answer`)."""
        self.record_answer(
            model,
            phase,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.cached_prompt_tokens,
            completion.reasoning_tokens,
            billing=billing,
        )

    def record_call(self, model: str, phase: str, latency_s: float) -> None:
        c = self.counters(model, phase)
        c.http_calls += 1
        c.latency.add(latency_s)

    def record_hit(
        self, model: str, phase: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        c = self.counters(model, phase)
        c.cache_hits += 1
        c.saved_prompt_tokens += prompt_tokens
        c.saved_completion_tokens += completion_tokens

    def record_dedup(self, model: str, phase: str) -> None:
        self.counters(model, phase).deduplicated += 1

    def record_retry(self, model: str, phase: str, rate_limited: bool) -> None:
        c = self.counters(model, phase)
        c.retries += 1
        if rate_limited:
            c.rate_limited += 1

    def record_failure(self, model: str, phase: str, kind: str) -> None:
        self.counters(model, phase).failures[kind] += 1

    def stop_clock(self) -> None:
        if self._stopped is None:
            self._stopped = time.monotonic()

    @property
    def wall_time_s(self) -> float:
        end = self._stopped if self._stopped is not None else time.monotonic()
        return end - self._started

    @property
    def spent_tokens(self) -> int:
        """Tokens spent by this session and the carried-over earlier ones (for budgets)."""
        spent = sum(c.prompt_tokens + c.completion_tokens for c in self._counters.values())
        return self._earlier_tokens + spent

    def spent_usd(self) -> float:
        """Dollars spent by this session and the carried-over earlier ones (for budgets)."""
        return self._earlier_usd + self._cost()[0]

    def _cost(self) -> tuple[float, dict[tuple[str, str], float], list[str]]:
        per_key: dict[tuple[str, str], float] = {}
        unpriced: set[str] = set()
        gpu_models: dict[str, float] = {}
        for (model, phase), c in self._counters.items():
            price = self.prices.price(model)
            if price is None:
                if c.requests:
                    unpriced.add(model)
                per_key[(model, phase)] = 0.0
                continue
            per_key[(model, phase)] = _token_cost(price, c)
            if price.gpu_hour_usd:
                gpu_models[model] = price.gpu_hour_usd * price.gpus
        gpu_cost = sum(rate * self.wall_time_s / 3600 for rate in gpu_models.values())
        return sum(per_key.values()) + gpu_cost, per_key, sorted(unpriced)

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-able: per (model, phase) rows, totals, dollars, wall time."""
        total_usd, per_key, unpriced = self._cost()
        rows = []
        totals = UsageCounters()
        for (model, phase), c in sorted(self._counters.items()):
            rows.append(
                {
                    "model": model,
                    "phase": phase,
                    "requests": c.requests,
                    "http_calls": c.http_calls,
                    "prompt_tokens": c.prompt_tokens,
                    "completion_tokens": c.completion_tokens,
                    **{name: getattr(c, name) for name in _DETAIL_FIELDS},
                    "cache_hits": c.cache_hits,
                    "deduplicated": c.deduplicated,
                    "saved_prompt_tokens": c.saved_prompt_tokens,
                    "saved_completion_tokens": c.saved_completion_tokens,
                    "retries": c.retries,
                    "rate_limited": c.rate_limited,
                    "failures": dict(c.failures),
                    "latency_p50_ms": round(c.latency.percentile(50) * 1000, 3),
                    "latency_p90_ms": round(c.latency.percentile(90) * 1000, 3),
                    "latency_p99_ms": round(c.latency.percentile(99) * 1000, 3),
                    "cost_usd": round(per_key[(model, phase)], 6),
                }
            )
            for name in (
                "requests",
                "http_calls",
                "prompt_tokens",
                "completion_tokens",
                *_DETAIL_FIELDS,
                "cache_hits",
                "deduplicated",
                "saved_prompt_tokens",
                "saved_completion_tokens",
                "retries",
                "rate_limited",
            ):
                setattr(totals, name, getattr(totals, name) + getattr(c, name))
            totals.failures.update(c.failures)
        return {
            "rows": rows,
            "totals": {
                "requests": totals.requests,
                "http_calls": totals.http_calls,
                "prompt_tokens": totals.prompt_tokens,
                "completion_tokens": totals.completion_tokens,
                "total_tokens": totals.prompt_tokens + totals.completion_tokens,
                **{name: getattr(totals, name) for name in _DETAIL_FIELDS},
                "cache_hits": totals.cache_hits,
                "deduplicated": totals.deduplicated,
                "saved_tokens": totals.saved_prompt_tokens + totals.saved_completion_tokens,
                "retries": totals.retries,
                "rate_limited": totals.rate_limited,
                "failures": sum(totals.failures.values()),
                "failures_by_kind": dict(totals.failures),
                "cost_usd": round(total_usd, 6),
                "unpriced_models": unpriced,
            },
            "wall_time_s": round(self.wall_time_s, 3),
        }


_DETAIL_FIELDS = (
    "cached_prompt_tokens",
    "reasoning_tokens",
    "batch_requests",
    "batch_prompt_tokens",
    "batch_cached_prompt_tokens",
    "batch_completion_tokens",
)
"""Usage beyond plain prompt and completion tokens, shown per row and in the totals."""


def _token_cost(price: Any, c: UsageCounters) -> float:
    """Dollars of one row's tokens: list-price calls and batch calls, each with its cached share."""
    standard = price.token_cost(
        c.prompt_tokens - c.batch_prompt_tokens,
        c.completion_tokens - c.batch_completion_tokens,
        c.cached_prompt_tokens - c.batch_cached_prompt_tokens,
    )
    batch = price.token_cost(
        c.batch_prompt_tokens,
        c.batch_completion_tokens,
        c.batch_cached_prompt_tokens,
        billing="batch",
    )
    return standard + batch
