"""How the benchmark builds its engines: the engine contender's, from a bench `Endpoint`, and the
scorer and optimizer engines of the estimate check. Both are endpoint specifications opened by
`gpo.endpoints.open_engines`, the builder the CLI uses, so bench measures the engine a user gets
for the same server. The start-up probe is off: the model is known, and every request counts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from backends.protocol import Capabilities
from engine.endpoint_spec import EndpointSpec, EngineSetSpec
from gpo.endpoints import open_engines

if TYPE_CHECKING:
    from engine.engine import Engine
    from perf.servers import Endpoint

ROLE = "scorer"
KNOWN = "known"
"""The window choice of the engine contender: the server's `max_num_seqs` is given (a managed
vLLM knows it). The window contenders give instead "measured" (nothing configured: the window
is found by measurement) or a number (`--scorer-concurrency N`, a hand-set window)."""


def endpoint_spec(endpoint: Endpoint, window: int | str = KNOWN) -> EndpointSpec:
    """The engine contender's endpoint: a vLLM-like server's batch, or a hosted chat API's
    limits. The key comes from OPENAI_API_KEY (none for a local server without it)."""
    limits = endpoint.api_limits
    if limits is None:
        return EndpointSpec(
            role=ROLE,
            urls=(endpoint.base_url,),
            model=endpoint.model,
            capabilities=Capabilities(
                max_concurrency=endpoint.max_num_seqs if window == KNOWN else None
            ),
            concurrency=window if isinstance(window, int) else None,
            chat_template=endpoint.chat_template,
            probe=False,
        )
    # A hosted chat API: one conversation per call. The limits are given as the provider
    # enforces them: buckets of `burst_fraction` of a minute.
    return EndpointSpec(
        role=ROLE,
        urls=(endpoint.base_url,),
        model=endpoint.model,
        capabilities=Capabilities(prompt_lists=False),
        requests_per_minute=limits.requests_per_minute * limits.burst_fraction,
        tokens_per_minute=limits.tokens_per_minute * limits.burst_fraction,
        rate_window_s=60.0 * limits.burst_fraction / endpoint.time_scale,
        probe=False,
    )


@contextlib.asynccontextmanager
async def open_engine(
    endpoint: Endpoint, cache_path: Path | None, window: int | str = KNOWN
) -> AsyncIterator[Engine]:
    """The engine contender's engine, with its response cache in `cache_path` (None: none)
    and the `window` choice (see `KNOWN`)."""
    spec = EngineSetSpec((endpoint_spec(endpoint, window),), cache_path=cache_path)
    async with open_engines(spec) as engines:
        yield engines[ROLE]


def estimate_spec(base_url: str, model: str) -> EngineSetSpec:
    """(scorer, optimizer) for the estimate check: both on one simulated server, each with its
    own ledger, so the check compares each role's usage with its estimate."""
    endpoints = tuple(
        EndpointSpec(
            role=role,
            urls=(base_url,),
            model=model,
            capabilities=Capabilities(max_concurrency=256),
            chat_template="chatml",
            probe=False,
        )
        for role in ("scorer", "optimizer")
    )
    return EngineSetSpec(endpoints, shared_ledger=False)


@contextlib.asynccontextmanager
async def open_estimate_engines(base_url: str, model: str) -> AsyncIterator[tuple[Engine, Engine]]:
    """The estimate check's (scorer, optimizer) engines, started and stopped."""
    async with open_engines(estimate_spec(base_url, model)) as engines:
        yield engines["scorer"], engines["optimizer"]
