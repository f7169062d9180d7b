"""From command-line flags to running engines: one per role (scorer, optimizer).

Each role gets an endpoint: `--ROLE-url` (one or several: several are spread by least outstanding
work), a managed vLLM (`--ROLE-vllm MODEL`, shared by the roles naming the same MODEL), or, when
no role names any endpoint, the embedded SmolLM2 model served by llama.cpp on a free loopback
port, shared by both roles and stopped at the end. All engines of a run share one response cache
and one ledger. Which server each role used is printed and kept in the run directory
(`gpo.run_servers`).

API keys are read from an environment variable (`--ROLE-api-key-env`, default OPENAI_API_KEY) or
a file (`--ROLE-api-key-file`), never from the command line, so they stay out of shell history,
process listings and the run directory. A value given to `--ROLE-api-key-env` that is not a
variable name, or to `--ROLE-api-key-file` that names no file and looks like a key, is refused
without being echoed.

Before any work, each endpoint is probed (`/v1/models`) with a short timeout of its own
(`GPO_PROBE_TIMEOUT_S`, default 15 s a try, 3 tries), not the long generation timeout: a server
that accepts connections and never answers is reported within a minute, with "waiting for URL"
notices on stderr meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Sequence
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
    Redirected,
    RequestTimeout,
    ServerError,
)
from backends.openai_client import OpenAICompatibleBackend
from backends.protocol import Backend, Capabilities
from backends.redaction import is_env_var_name, looks_like_key
from engine.cache import ResponseCache
from engine.engine import Engine, EngineConfig
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from gpo.budget_guard import refuse_unpriced_dollar_cap
from gpo.user_text import read_text_file

logger = logging.getLogger(__name__)

ROLES = ("scorer", "optimizer")
PROBE_TIMEOUT_ENV = "GPO_PROBE_TIMEOUT_S"
DEFAULT_PROBE_TIMEOUT_S = 15.0
PROBE_ATTEMPTS = 3
_NOTICE_EVERY_S = 5.0


class _KeyEnvAction(argparse.Action):
    """`--ROLE-api-key-env NAME`: a variable name, never a key (which is refused unechoed)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        if not is_env_var_name(str(values)):
            parser.error(
                f"{option}: the value is not an environment variable name (not shown, in case "
                "it is a key); give the NAME of the variable that holds the key, e.g. "
                "OPENAI_API_KEY"
            )
        setattr(namespace, self.dest, values)


class _KeyFileAction(argparse.Action):
    """`--ROLE-api-key-file PATH`: a file that must exist; a missing one that looks like a key
    is refused without being echoed (it would otherwise reach config.json and the error)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        path = Path(values)
        if not path.exists():  # a pipe (<(pass show key)) is fine too
            shown = f"{path}" if not looks_like_key(str(path)) else "the value (not shown: a key?)"
            parser.error(
                f"{option}: {shown} does not exist; give the path of a file holding the key"
            )
        setattr(namespace, self.dest, path)


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
        help="start a vLLM server for MODEL (`embedded`: SmolLM2, after `gpo setup-local "
        "--vllm`) on a free loopback port and stop it at the end: `vllm serve` on a GPU, the "
        "CPU build without one; roles naming the same MODEL share one server",
    )
    group.add_argument(
        f"--{role}-api-key-env",
        metavar="VAR",
        default="OPENAI_API_KEY",
        action=_KeyEnvAction,
        help="environment variable holding the API key (default OPENAI_API_KEY)",
    )
    group.add_argument(
        f"--{role}-api-key-file",
        metavar="PATH",
        type=Path,
        action=_KeyFileAction,
        help="file holding the API key",
    )
    group.add_argument(
        f"--{role}-concurrency",
        type=_number(int, 1, 100_000),
        metavar="N",
        help="sequences in flight (default: sized from the server)",
    )
    group.add_argument(
        f"--{role}-batch-size",
        type=_number(int, 1, 100_000),
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
        f"--{role}-rpm",
        type=_number(float, 0, 1e9, inclusive=False),
        metavar="N",
        help="requests-per-minute limit",
    )
    group.add_argument(
        f"--{role}-tpm",
        type=_number(float, 0, 1e12, inclusive=False),
        metavar="N",
        help="tokens-per-minute limit",
    )
    group.add_argument(
        f"--{role}-gpu-hour-usd",
        type=_number(float, 0, 1e6),
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
    group.add_argument("--max-retries", type=_number(int, 0, 1_000), default=8, metavar="N")
    group.add_argument(
        "--request-timeout",
        type=_number(float, 0, 7 * 86_400, inclusive=False),
        default=600.0,
        metavar="S",
        help="seconds before a call is abandoned and retried (default 600)",
    )
    group.add_argument(
        "--budget-usd",
        type=_number(float, 0, 1e9, inclusive=False),
        metavar="USD",
        help="stop cleanly once this many dollars are spent",
    )
    group.add_argument(
        "--budget-tokens",
        type=_number(int, 1, 10**15),
        metavar="N",
        help="stop cleanly once this many tokens are spent",
    )


MAX_TOKENS = 1_000_000
"""The most tokens a flag may ask one request to generate (more than any model's context)."""


@dataclasses.dataclass(frozen=True, slots=True)
class BoundedNumber:
    """An argparse type: a finite `kind` (int or float) from `minimum` (excluded unless
    `inclusive`) to `maximum`. argparse names the flag in its error; the message names the
    allowed range."""

    kind: type
    minimum: float
    maximum: float
    inclusive: bool = True

    @property
    def allowed(self) -> str:
        low, high = _shown(self.minimum), _shown(self.maximum)
        return f"from {low} to {high}" if self.inclusive else f"above {low}, up to {high}"

    def __call__(self, text: str) -> Any:
        shown = text if len(text) <= 40 else text[:37] + "..."
        try:
            value = self.kind(text)
        except ValueError:
            what = "an integer" if self.kind is int else "a number"
            raise argparse.ArgumentTypeError(
                f"{shown!r} is not {what} (allowed: {self.allowed})"
            ) from None
        below = value < self.minimum or (value == self.minimum and not self.inclusive)
        if not math.isfinite(value) or below or value > self.maximum:
            raise argparse.ArgumentTypeError(f"{shown!r} is out of range (allowed: {self.allowed})")
        return value


def _number(kind: type, minimum: float, maximum: float, *, inclusive: bool = True) -> BoundedNumber:
    return BoundedNumber(kind, minimum, maximum, inclusive)


def _shown(bound: float) -> str:
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:,}"


def read_api_key(args: argparse.Namespace, role: str) -> str | None:
    key_file: Path | None = getattr(args, f"{role}_api_key_file", None)
    if key_file is not None:
        shown = "the file" if looks_like_key(str(key_file)) else key_file
        try:
            key = read_text_file(Path(key_file), f"--{role}-api-key-file", secret=True).strip()
        except ConfigError:
            if shown != key_file:
                raise ConfigError(f"--{role}-api-key-file: cannot read the file") from None
            raise
        if not key:
            raise ConfigError(f"--{role}-api-key-file: {shown} is empty")
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


def probe_timeout_s() -> float:
    """Seconds one start-up probe waits for an answer (`GPO_PROBE_TIMEOUT_S`, default 15)."""
    text = os.environ.get(PROBE_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_PROBE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{PROBE_TIMEOUT_ENV}={text!r}: must be a positive number of seconds")
    return value


def _notice(text: str) -> None:
    print(f"gpo: {text}", file=sys.stderr, flush=True)


async def _with_notices(call: Awaitable[Any], url: str, started: float, timeout_s: float) -> Any:
    """Await `call`, saying every few seconds that it waits; a `RequestTimeout` if it has not
    ended a little after `timeout_s` (its own timeout should have ended it by then)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(call)
    try:
        for _ in range(int(timeout_s / _NOTICE_EVERY_S) + 2):
            done, _ = await asyncio.wait({task}, timeout=_NOTICE_EVERY_S)
            if done:
                return task.result()
            _notice(f"waiting for {url} ({loop.time() - started:.0f} s)")
        raise RequestTimeout(f"no answer within {timeout_s:g} s", endpoint=url)
    finally:
        task.cancel()


async def served_models(
    backend: OpenAICompatibleBackend,
    role: str,
    attempts: int = PROBE_ATTEMPTS,
    timeout_s: float | None = None,
) -> list[str] | None:
    """The models the endpoint lists, trying a few times (each try bounded by the probe
    timeout) before calling it unreachable; None when it does not list models (some hosted
    APIs do not)."""
    timeout_s = probe_timeout_s() if timeout_s is None else timeout_s
    loop = asyncio.get_running_loop()
    started = loop.time()
    url = backend.base_url
    last: BackendError | None = None
    for attempt in range(attempts):
        try:
            return await _with_notices(
                backend.list_models(timeout_s=timeout_s), url, started, timeout_s
            )
        except (ConnectionFailed, ServerError, RequestTimeout, MalformedResponse) as error:
            last = error
            if attempt + 1 < attempts:
                _notice(
                    f"waiting for {url} ({loop.time() - started:.0f} s; try {attempt + 1} of "
                    f"{attempts}: {error})"
                )
                await asyncio.sleep(0.5 * 2**attempt)
        except ClientRequestError as error:
            if isinstance(error, AuthenticationError | Redirected):
                raise
            return None
    raise ConfigError(
        f"--{role}-url {url}: the server cannot be reached after {attempts} attempts in "
        f"{loop.time() - started:.0f} s ({last}); each try waits {timeout_s:g} s "
        f"(set {PROBE_TIMEOUT_ENV} to change it)"
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


async def _managed_vllm(
    stack: contextlib.AsyncExitStack,
    started: dict[str, Any],
    args: argparse.Namespace,
    role: str,
    run_dir: Path | None,
) -> Any:
    """The managed vLLM for `role`'s `--ROLE-vllm MODEL`: the one started for another role
    naming the same MODEL, or a new one (logging to the run directory)."""
    from backends.vllm_serve import ManagedVllmServer

    model = getattr(args, f"{role}_vllm")
    if model not in started:
        log_path = run_dir / f"vllm-{role}.log" if run_dir is not None else None
        started[model] = await stack.enter_async_context(
            ManagedVllmServer(model, log_path=log_path)
        )
    return started[model]


def _record(run_dir: Path | None, role: str, server: Any, backend: Backend) -> None:
    """Print and keep which server `role` uses (a managed one's own description, or the URL)."""
    from gpo.run_servers import record_server, server_description

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
    )


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
        vllm_servers: dict[str, Any] = {}
        engines: dict[str, Engine] = {}
        for role in roles:
            backend: Backend
            server: Any = None
            if role_uses_embedded(args, role):
                if embedded is None:
                    from backends.llamacpp import EmbeddedModelServer

                    log_path = run_dir / "embedded-server.log" if run_dir is not None else None
                    embedded = await stack.enter_async_context(
                        EmbeddedModelServer(log_path=log_path)
                    )
                server = embedded
                backend = await _http_backend(
                    args,
                    role,
                    embedded.url,
                    embedded.capabilities,
                    embedded.model_name,
                    identity="embedded-llama.cpp",
                )
            elif getattr(args, f"{role}_vllm", None):
                server = await _managed_vllm(stack, vllm_servers, args, role, run_dir)
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
                # A resumed run whose endpoint moved keeps the old URLs' cache identities.
                identities = getattr(args, f"{role}_url_identities", None) or [None] * len(urls)
                backends = [
                    await _http_backend(args, role, url, Capabilities(), identity=identity)
                    for url, identity in zip(urls, identities, strict=True)
                ]
                if len(backends) == 1:
                    backend = backends[0]
                else:
                    from engine.endpoint_pool import EndpointPool

                    backend = EndpointPool(backends)
            _record(run_dir, role, server, backend)
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
        from gpo.run_servers import explain_server_death

        try:
            with explain_server_death([embedded, *vllm_servers.values()], run_dir):
                yield engines
        finally:
            ledger.stop_clock()
    if cache is not None:
        cache.close()
