"""The one way to build a run's engines: `open_engines(spec)`, from an `EngineSetSpec`.

Every endpoint of the specification is opened by the factory its kind names in
`engine.backend_registry` (servers started, start-up probes with their short timeout), and every
engine shares one response cache, one ledger and one budget (unless the specification asks for
one ledger, and so one budget, per engine). A dollar cap with a model the price table does not
know is refused before any work (`gpo.budget_guard`). Every server started here is stopped on
exit, also on errors and Ctrl-C.

The CLI builds its specification from flags (`gpo.endpoint_flags.spec_from_args`); bench and the
fault matrix write theirs (`perf.engines`, `perf.fault_run`).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from backends.protocol import Backend
from backends.startup_probe import (
    PROBE_TIMEOUT_ENV as PROBE_TIMEOUT_ENV,
)
from backends.startup_probe import (
    probe_timeout_s as probe_timeout_s,
)
from backends.startup_probe import (
    served_models as served_models,
)
from engine.backend_registry import OpenContext, open_backend
from engine.budget import Budget
from engine.cache import ResponseCache
from engine.endpoint_spec import EngineSetSpec
from engine.engine import Engine
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from gpo.budget_guard import refuse_unpriced_dollar_cap
from gpo.endpoint_flags import BoundedNumber as BoundedNumber  # re-exported
from gpo.run_servers import (
    explain_server_death,
    record_learned,
    record_server,
    server_description,
)


def _record(
    run_dir: Path, role: str, server: Any, backend: Backend, origin: str | None = None
) -> None:
    """Print and keep which server `role` uses (a managed one's own description, or the URL),
    and why when the command chose it (`origin`)."""
    url = getattr(backend, "base_url", None)
    if url is None:  # a pool: every endpoint's identity names its URL
        url = ", ".join(status.identity for status in getattr(backend, "status", tuple)())
    kind = backend.identity.split("|", 1)[0] if server is not None else "url"
    process = getattr(server, "process", None)
    record_server(
        run_dir,
        role,
        kind=kind,
        description=server_description(server, url, backend.model),
        url=url,
        model=backend.model,
        log_path=getattr(process, "log_path", None),
        version=getattr(server, "version", None),
        facts=getattr(backend, "server_facts", None) if server is None else None,
        origin=origin,
    )


@contextlib.asynccontextmanager
async def open_engines(spec: EngineSetSpec) -> AsyncIterator[dict[str, Engine]]:
    """An engine per role of `spec`, keyed by role, sharing one cache and one ledger; every
    server started here is stopped on exit, also on errors and Ctrl-C."""
    prices = PriceTable.from_file(spec.prices_path) if spec.prices_path else PriceTable()
    ledger = Ledger(prices)
    ledgers = [ledger]
    # One budget per ledger (one for the run unless asked otherwise): every engine that shares
    # it sees the others' calls in flight.
    budgets = [Budget(ledger, usd=spec.budget_usd, tokens=spec.budget_tokens)]
    cache = ResponseCache(spec.cache_path) if spec.cache_path is not None else None
    try:
        async with contextlib.AsyncExitStack() as stack:
            context = OpenContext(stack, spec.log_dir)
            engines: dict[str, Engine] = {}
            for endpoint in spec.endpoints:
                backend = await stack.enter_async_context(open_backend(endpoint, context))
                if spec.log_dir is not None:  # a CLI run: say which server each role uses
                    server = context.servers.get(endpoint.role)
                    _record(spec.log_dir, endpoint.role, server, backend, endpoint.origin)
                if endpoint.gpu_hour_usd is not None:
                    prices.set(backend.model, ModelPrice(gpu_hour_usd=endpoint.gpu_hour_usd))
                if not spec.shared_ledger and engines:
                    ledgers.append(Ledger(prices))
                    budgets.append(
                        Budget(ledgers[-1], usd=spec.budget_usd, tokens=spec.budget_tokens)
                    )
                engine = Engine(
                    backend,
                    endpoint.engine_config(),
                    cache=cache,
                    ledger=ledgers[-1],
                    budget=budgets[-1],
                )
                await stack.enter_async_context(engine)
                engines[endpoint.role] = engine
                learned = functools.partial(record_learned, spec.log_dir, endpoint.role)
                engine.prompt_lists.on_refused(functools.partial(learned, "no prompt lists"))
            refuse_unpriced_dollar_cap(spec.budget_usd, engines, prices)
            started = list({id(server): server for server in context.servers.values()}.values())
            try:
                with explain_server_death(started, spec.log_dir):
                    yield engines
            finally:
                for each in ledgers:
                    each.stop_clock()
    finally:
        if cache is not None:
            cache.close()
