"""The simulated server's counters and their Prometheus text at `GET /metrics`.

vLLM-like names describe the simulated GPU (`vllm:num_requests_running`, `vllm:num_requests_waiting`
and `vllm:kv_cache_usage_perc` count sequences and blocks now; `vllm:prompt_tokens_total` counts
prompt tokens admitted, `vllm:generation_tokens_total` tokens generated, both including work
later aborted; `vllm:prefix_cache_queries_total` / `_hits_total` count prompt tokens looked up /
found cached, and `vllm:gpu_prefix_cache_hit_rate` is their ratio). `sim_*` names are the
server's own bookkeeping: HTTP requests by endpoint and status, sequences and tokens actually
served (billed in `usage`; faulty requests are never counted), generation calls answered by
purpose (the `X-GPO-Purpose` header, "none" without one), 429s sent, faults injected by kind,
simulated time, restarts. Counters survive `restart()` so a benchmark sees whole runs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from backends.simulated.batching import ContinuousBatcher
from backends.simulated.prefix_cache import PrefixCache


@dataclass(slots=True)
class ServerCounters:
    """Mutable tallies kept by the request handlers."""

    http_requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    generation_requests_served: int = 0
    purposes: Counter[str] = field(default_factory=Counter)
    sequences_served: int = 0
    prompt_tokens_served: int = 0
    cached_prompt_tokens_served: int = 0
    completion_tokens_served: int = 0
    finish_reasons: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    sequences_aborted: int = 0
    restarts: int = 0


def _line(name: str, value: float, labels: dict[str, str]) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


Samples = list[tuple[dict[str, str], float]]


class _Exposition:
    """Prometheus text being written: a HELP and a TYPE line, then the samples, per metric."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples: Samples) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        self.lines.extend(_line(name, value, labels) for labels, value in samples)

    def text(self) -> str:
        return "\n".join([*self.lines, ""])


def render_metrics(
    *,
    model: str,
    max_num_seqs: int,
    counters: ServerCounters,
    batcher: ContinuousBatcher | None,
    prefix_cache: PrefixCache | None,
    simulated_s: float,
) -> str:
    """The Prometheus exposition text for the current state."""
    out = _Exposition()
    _vllm_metrics(out, {"model_name": model}, counters, batcher, prefix_cache)
    _sim_metrics(out, counters, max_num_seqs, simulated_s)
    return out.text()


def _vllm_metrics(
    out: _Exposition,
    model_label: dict[str, str],
    counters: ServerCounters,
    batcher: ContinuousBatcher | None,
    prefix_cache: PrefixCache | None,
) -> None:
    """The vLLM-named metrics: the simulated GPU's batch, KV cache, tokens and prefix cache."""
    running = batcher.num_running if batcher else 0
    waiting = batcher.num_waiting if batcher else 0
    kv_usage = batcher.kv_cache_usage if batcher else 0.0
    if batcher is not None:
        prompt_tokens, generation_tokens = batcher.prompt_tokens_admitted, batcher.generation_tokens
    else:
        prompt_tokens = counters.prompt_tokens_served
        generation_tokens = counters.completion_tokens_served
    queries = prefix_cache.query_tokens if prefix_cache else 0
    hits = prefix_cache.hit_tokens if prefix_cache else 0
    gauges_and_counters = [
        ("vllm:num_requests_running", "gauge", "Sequences in the batch.", running),
        ("vllm:num_requests_waiting", "gauge", "Sequences queued.", waiting),
        ("vllm:kv_cache_usage_perc", "gauge", "KV blocks in use, 0-1.", kv_usage),
        ("vllm:prompt_tokens_total", "counter", "Prompt tokens admitted.", prompt_tokens),
        ("vllm:generation_tokens_total", "counter", "Tokens generated.", generation_tokens),
        (
            "vllm:prefix_cache_queries_total",
            "counter",
            "Prompt tokens looked up in the prefix cache.",
            queries,
        ),
        (
            "vllm:prefix_cache_hits_total",
            "counter",
            "Prompt tokens found in the prefix cache.",
            hits,
        ),
        (
            "vllm:gpu_prefix_cache_hit_rate",
            "gauge",
            "Prefix cache hits / queries, in tokens.",
            hits / queries if queries else 0.0,
        ),
    ]
    for name, kind, help_text, value in gauges_and_counters:
        out.metric(name, kind, help_text, [(model_label, value)])
    out.metric(
        "vllm:request_success_total",
        "counter",
        "Sequences finished, by reason.",
        [
            ({**model_label, "finished_reason": r}, c)
            for r, c in sorted(counters.finish_reasons.items())
        ],
    )


def _sim_metrics(
    out: _Exposition, counters: ServerCounters, max_num_seqs: int, simulated_s: float
) -> None:
    """The `sim_*` metrics: the server's own bookkeeping of what it answered and injected."""
    out.metric(
        "sim_http_requests_total",
        "counter",
        "HTTP requests by endpoint and status.",
        [
            ({"endpoint": endpoint, "status": str(status)}, count)
            for (endpoint, status), count in sorted(counters.http_requests.items())
        ],
    )
    simple = [
        (
            "sim_generation_requests_served_total",
            "Generation HTTP calls answered 200.",
            counters.generation_requests_served,
        ),
        (
            "sim_sequences_served_total",
            "Sequences (prompt x choice) served.",
            counters.sequences_served,
        ),
        (
            "sim_prompt_tokens_served_total",
            "Prompt tokens billed in usage.",
            counters.prompt_tokens_served,
        ),
        (
            "sim_cached_prompt_tokens_served_total",
            "Prompt tokens reported cached in usage (prompt_tokens_details.cached_tokens).",
            counters.cached_prompt_tokens_served,
        ),
        (
            "sim_completion_tokens_served_total",
            "Completion tokens billed in usage.",
            counters.completion_tokens_served,
        ),
        ("sim_rate_limited_total", "429 answers sent.", counters.rate_limited),
        (
            "sim_sequences_aborted_total",
            "Sequences dropped (client gone or crash).",
            counters.sequences_aborted,
        ),
        ("sim_restarts_total", "Restarts and take-downs.", counters.restarts),
        ("sim_simulated_seconds_total", "Simulated seconds the GPU has been busy.", simulated_s),
        ("sim_max_num_seqs", "The server's max_num_seqs.", max_num_seqs),
    ]
    for name, help_text, value in simple:
        kind = "gauge" if name == "sim_max_num_seqs" else "counter"
        out.metric(name, kind, help_text, [({}, value)])
    out.metric(
        "sim_requests_by_purpose_total",
        "counter",
        "Generation HTTP calls answered 200, by X-GPO-Purpose.",
        [({"purpose": purpose}, count) for purpose, count in sorted(counters.purposes.items())],
    )
    out.metric(
        "sim_faults_injected_total",
        "counter",
        "Faults injected, by kind.",
        [({"kind": kind}, count) for kind, count in sorted(counters.faults.items())],
    )


def parse_prometheus(text: str) -> dict[str, float]:
    """Samples of a Prometheus text as {'name{labels}': value}, labels as written."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            samples[name] = float(value)
        except ValueError:
            continue
    return samples


def metric_total(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include all of `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base == name and all(w in rest for w in wanted):
            total += value
    return total
