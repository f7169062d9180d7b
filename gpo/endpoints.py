"""From command-line flags to running engines: one per role (scorer, optimizer).

Each role gets an endpoint: `--ROLE-url` (one or several: several are spread by least outstanding
work), a managed `vllm serve` (`--ROLE-vllm MODEL`), or, when no role names any endpoint, the
embedded SmolLM2 model served by llama.cpp on a free loopback port, shared by both roles and
stopped at the end. All engines of a run share one response cache and one ledger.

API keys are read from an environment variable (`--ROLE-api-key-env`, default OPENAI_API_KEY) or
a file (`--ROLE-api-key-file`), never from the command line, so they stay out of shell history,
process listings and the run directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from backends.chat_template import CHAT_TEMPLATES
from backends.errors import (
    AuthenticationError,
    BackendError,
    ClientRequestError,
    ConfigError,
    ConnectionFailed,
    MalformedResponse,
    RequestTimeout,
    ServerError,
)
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Backend, Capabilities
from engine.cache import ResponseCache
from engine.engine import Engine, EngineConfig
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from gpo.budget_guard import refuse_unpriced_dollar_cap

logger = logging.getLogger(__name__)

ROLES = ("scorer", "optimizer")


def add_endpoint_arguments(parser: argparse.ArgumentParser, role: str) -> None:
    """Flags for one role's endpoint and scheduling policy."""
    group = parser.add_argument_group(f"{role} endpoint")
    group.add_argument(
        f"--{role}-url",
        action="append",
        metavar="URL",
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1 (repeat for several "
        "servers). Default: OPENAI_BASE_URL if set, else the embedded local model.",
    )
    group.add_argument(
        f"--{role}-model",
        metavar="NAME",
        help="model name (default: the first one the endpoint lists)",
    )
    group.add_argument(
        f"--{role}-vllm",
        metavar="MODEL",
        help="start `vllm serve MODEL` for "
        "this role on a free loopback port and stop it at the end",
    )
    group.add_argument(
        f"--{role}-api-key-env",
        metavar="VAR",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    group.add_argument(
        f"--{role}-api-key-file", metavar="PATH", type=Path, help="file holding the API key"
    )
    group.add_argument(
        f"--{role}-concurrency",
        type=_positive_int,
        metavar="N",
        help="sequences in flight (default: sized from the server)",
    )
    group.add_argument(
        f"--{role}-batch-size",
        type=_positive_int,
        default=32,
        metavar="N",
        help="prompts per /v1/completions call (default 32)",
    )
    group.add_argument(
        f"--{role}-no-prompt-lists",
        action="store_true",
        help="send one prompt per call (for servers that refuse prompt lists)",
    )
    group.add_argument(
        f"--{role}-chat-template",
        metavar="NAME",
        choices=sorted(CHAT_TEMPLATES),
        help="render chats client-side with this template (chatml, llama2, "
        "llama3) so they travel as prompt lists; must match the server's",
    )
    group.add_argument(
        f"--{role}-rpm", type=_positive_float, metavar="N", help="requests-per-minute limit"
    )
    group.add_argument(
        f"--{role}-tpm", type=_positive_float, metavar="N", help="tokens-per-minute limit"
    )
    group.add_argument(
        f"--{role}-gpu-hour-usd",
        type=_non_negative_float,
        metavar="USD",
        help="price of this role's server per GPU-hour (local servers)",
    )


def add_shared_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every role: cache, prices, retries, budgets."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--cache",
        type=Path,
        metavar="PATH",
        help="response cache file (default: cache.sqlite in the run directory)",
    )
    group.add_argument("--no-cache", action="store_true", help="do not cache answers")
    group.add_argument(
        "--prices", type=Path, metavar="PATH", help="JSON price table extending the built-in one"
    )
    group.add_argument("--max-retries", type=_non_negative_int, default=8, metavar="N")
    group.add_argument(
        "--request-timeout",
        type=_positive_float,
        default=600.0,
        metavar="S",
        help="seconds before a call is abandoned and retried (default 600)",
    )
    group.add_argument(
        "--budget-usd",
        type=_positive_float,
        metavar="USD",
        help="stop cleanly once this many dollars are spent",
    )
    group.add_argument(
        "--budget-tokens",
        type=_positive_int,
        metavar="N",
        help="stop cleanly once this many tokens are spent",
    )


def _number(kind: type, minimum: float, inclusive: bool, name: str):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {name}") from None
        if value < minimum or (value == minimum and not inclusive):
            bound = ">=" if inclusive else ">"
            raise argparse.ArgumentTypeError(f"{text!r} must be {bound} {minimum}")
        return value

    return parse


_positive_int = _number(int, 0, False, "integer")
_non_negative_int = _number(int, 0, True, "integer")
_positive_float = _number(float, 0, False, "number")
_non_negative_float = _number(float, 0, True, "number")


def read_api_key(args: argparse.Namespace, role: str) -> str | None:
    key_file: Path | None = getattr(args, f"{role}_api_key_file", None)
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as error:
            raise ConfigError(
                f"--{role}-api-key-file: cannot read {key_file}: {error.strerror}"
            ) from None
        if not key:
            raise ConfigError(f"--{role}-api-key-file: {key_file} is empty")
        return key
    return os.environ.get(getattr(args, f"{role}_api_key_env", "OPENAI_API_KEY") or "") or None


def role_uses_embedded(args: argparse.Namespace, role: str) -> bool:
    return not (
        getattr(args, f"{role}_url", None)
        or getattr(args, f"{role}_vllm", None)
        or os.environ.get("OPENAI_BASE_URL")
    )


def _engine_config(args: argparse.Namespace, role: str, capabilities: Capabilities) -> EngineConfig:
    concurrency = getattr(args, f"{role}_concurrency", None)
    return EngineConfig(
        max_concurrency=concurrency,
        max_batch_size=getattr(args, f"{role}_batch_size", 32),
        prompt_lists=not getattr(args, f"{role}_no_prompt_lists", False),
        chat_template=getattr(args, f"{role}_chat_template", None),
        requests_per_minute=getattr(args, f"{role}_rpm", None),
        tokens_per_minute=getattr(args, f"{role}_tpm", None),
        max_retries=getattr(args, "max_retries", 8),
        budget_usd=getattr(args, "budget_usd", None),
        budget_tokens=getattr(args, "budget_tokens", None),
    )


async def served_models(
    backend: OpenAICompatibleBackend, role: str, attempts: int = 3
) -> list[str] | None:
    """The models the endpoint lists, trying a few times before calling it unreachable; None
    when it does not list models (some hosted APIs do not)."""
    last: BackendError | None = None
    for attempt in range(attempts):
        try:
            return await backend.list_models()
        except (ConnectionFailed, ServerError, RequestTimeout, MalformedResponse) as error:
            last = error
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5 * 2**attempt)
        except ClientRequestError as error:
            if isinstance(error, AuthenticationError):
                raise
            return None
    raise ConfigError(
        f"--{role}-url {backend.base_url}: the server cannot be reached after {attempts} "
        f"attempts ({last})"
    )


async def _http_backend(
    args: argparse.Namespace,
    role: str,
    url: str,
    capabilities: Capabilities,
    model: str | None = None,
    identity: str | None = None,
) -> OpenAICompatibleBackend:
    """A backend for `url`; the model is checked against the ones the server lists (or taken
    from that list), so an unknown model or an unreachable server is one clear error before
    any work starts."""
    concurrency = getattr(args, f"{role}_concurrency", None) or capabilities.max_concurrency or 64

    def make(name: str | None) -> OpenAICompatibleBackend:
        return OpenAICompatibleBackend(
            url,
            name,
            api_key=read_api_key(args, role),
            capabilities=capabilities,
            max_connections=max(8, concurrency * 2),
            request_timeout_s=getattr(args, "request_timeout", 600.0),
            identity=identity,
        )

    wanted = model or getattr(args, f"{role}_model", None)
    backend = make(wanted)
    try:
        models = await served_models(backend, role)
    except BaseException:
        await backend.close()
        raise
    if wanted:
        if models is not None and models and wanted not in models:
            await backend.close()
            raise ConfigError(
                f"--{role}-model {wanted!r}: {backend.base_url} does not serve it; "
                f"it serves: {', '.join(models)}"
            )
        return backend
    await backend.close()
    if not models:
        raise ConfigError(f"--{role}-model: {backend.base_url} lists no model; name one")
    return make(models[0])


@contextlib.asynccontextmanager
async def open_engines(
    args: argparse.Namespace,
    roles: Sequence[str],
    run_dir: Path | None,
) -> AsyncIterator[dict[str, Engine]]:
    """Engines for `roles`, sharing one cache and one ledger; every server started here is
    stopped on exit, also on errors and Ctrl-C."""
    prices = PriceTable.from_file(args.prices) if getattr(args, "prices", None) else PriceTable()
    ledger = Ledger(prices)
    cache: ResponseCache | None = None
    if not getattr(args, "no_cache", False):
        cache_path = getattr(args, "cache", None) or (
            run_dir / "cache.sqlite" if run_dir is not None else None
        )
        if cache_path is not None:
            cache = ResponseCache(cache_path)
    async with contextlib.AsyncExitStack() as stack:
        embedded = None
        engines: dict[str, Engine] = {}
        for role in roles:
            backend: Backend
            if role_uses_embedded(args, role):
                if embedded is None:
                    from backends.llamacpp import EmbeddedModelServer

                    log_path = run_dir / "embedded-server.log" if run_dir is not None else None
                    embedded = await stack.enter_async_context(
                        EmbeddedModelServer(log_path=log_path)
                    )
                backend = await _http_backend(
                    args,
                    role,
                    embedded.url,
                    embedded.capabilities,
                    embedded.model_name,
                    identity="embedded-llama.cpp",
                )
            elif getattr(args, f"{role}_vllm", None):
                from backends.vllm_serve import ManagedVllmServer

                log_path = run_dir / f"vllm-{role}.log" if run_dir is not None else None
                server = await stack.enter_async_context(
                    ManagedVllmServer(getattr(args, f"{role}_vllm"), log_path=log_path)
                )
                backend = await _http_backend(
                    args,
                    role,
                    server.url,
                    server.capabilities,
                    server.model_name,
                    identity="managed-vllm",
                )
            else:
                urls = getattr(args, f"{role}_url", None) or [os.environ["OPENAI_BASE_URL"]]
                backends = [await _http_backend(args, role, url, Capabilities()) for url in urls]
                if len(backends) == 1:
                    backend = backends[0]
                else:
                    from engine.endpoint_pool import EndpointPool

                    backend = EndpointPool(backends)
            gpu_price = getattr(args, f"{role}_gpu_hour_usd", None)
            if gpu_price is not None:
                prices.set(backend.model, ModelPrice(gpu_hour_usd=gpu_price))
            engine = Engine(
                backend,
                _engine_config(args, role, backend.capabilities),
                cache=cache,
                ledger=ledger,
            )
            await stack.enter_async_context(engine)
            engines[role] = engine
        refuse_unpriced_dollar_cap(args, engines, prices)
        try:
            yield engines
        finally:
            ledger.stop_clock()
    if cache is not None:
        cache.close()
