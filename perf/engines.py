"""How the benchmark builds its engines: from a bench `Endpoint` for the engine contender, and
the scorer and optimizer engines of the estimate check. The one place that turns a server's
description into `OpenAICompatibleBackend` + `EngineConfig`, so it can be swapped as a whole."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.cache import ResponseCache
    from engine.engine import Engine
    from perf.servers import Endpoint


def build_engine(endpoint: Endpoint, cache: ResponseCache | None) -> Engine:
    """The engine contender's engine: a vLLM-like server's batch, or a hosted chat API's limits."""
    from backends.openai_client import OpenAICompatibleBackend
    from backends.protocol import Capabilities
    from engine.engine import Engine, EngineConfig

    limits = endpoint.api_limits
    if limits is None:
        capabilities = Capabilities(max_concurrency=endpoint.max_num_seqs)
        config = EngineConfig(chat_template=endpoint.chat_template)
    else:
        # A hosted chat API: one conversation per call. The limits are given as the provider
        # enforces them: buckets of `burst_fraction` of a minute.
        capabilities = Capabilities(prompt_lists=False)
        window_s = 60.0 * limits.burst_fraction / endpoint.time_scale
        config = EngineConfig(
            requests_per_minute=limits.requests_per_minute * limits.burst_fraction,
            tokens_per_minute=limits.tokens_per_minute * limits.burst_fraction,
            rate_window_s=window_s,
        )
    backend = OpenAICompatibleBackend(
        endpoint.base_url, endpoint.model, api_key=endpoint.api_key, capabilities=capabilities
    )
    return Engine(backend, config, cache=cache)


def build_estimate_engines(base_url: str, model: str) -> tuple[Engine, Engine]:
    """(scorer, optimizer) for the estimate check: both on one simulated server."""
    from backends.openai_client import OpenAICompatibleBackend
    from backends.protocol import Capabilities
    from engine.engine import Engine, EngineConfig

    capabilities = Capabilities(max_concurrency=256)
    scorer = Engine(
        OpenAICompatibleBackend(base_url, model, capabilities=capabilities),
        EngineConfig(chat_template="chatml"),
    )
    optimizer = Engine(
        OpenAICompatibleBackend(base_url, model, capabilities=capabilities),
        EngineConfig(chat_template="chatml"),
    )
    return scorer, optimizer
