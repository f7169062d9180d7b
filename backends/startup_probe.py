"""The start-up probe: before any work, ask an endpoint which models it serves (`/v1/models`), with
a short timeout of its own (`GPO_PROBE_TIMEOUT_S`, default 15 s a try, 3 tries), not the long
generation timeout, so a server that accepts connections and never answers is reported within a
minute, with "waiting for URL" notices on stderr meanwhile, and a server that is down is one
clear error naming the role's `--ROLE-url` flag.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable
from typing import Any

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

PROBE_TIMEOUT_ENV = "GPO_PROBE_TIMEOUT_S"
DEFAULT_PROBE_TIMEOUT_S = 15.0
PROBE_ATTEMPTS = 3
_NOTICE_EVERY_S = 5.0


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
    APIs do not). `role` names the flag in the error: `--ROLE-url`."""
    entries, _ = await served_model_entries(backend, role, attempts, timeout_s)
    return None if entries is None else [entry["id"] for entry in entries]


async def served_model_entries(
    backend: OpenAICompatibleBackend,
    role: str,
    attempts: int = PROBE_ATTEMPTS,
    timeout_s: float | None = None,
) -> tuple[list[dict[str, Any]] | None, dict[str, str]]:
    """`served_models`, with each model's whole `/v1/models` entry (vLLM's `root` and
    `max_model_len`, llama.cpp's `meta`, the owner) and the answer's headers."""
    timeout_s = probe_timeout_s() if timeout_s is None else timeout_s
    loop = asyncio.get_running_loop()
    started = loop.time()
    url = backend.base_url
    last: BackendError | None = None
    for attempt in range(attempts):
        try:
            entries, headers = await _with_notices(
                backend.models_answer(timeout_s=timeout_s), url, started, timeout_s
            )
            return entries, headers
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
            return None, {}
    raise ConfigError(
        f"--{role}-url {url}: the server cannot be reached after {attempts} attempts in "
        f"{loop.time() - started:.0f} s ({last}); each try waits {timeout_s:g} s "
        f"(set {PROBE_TIMEOUT_ENV} to change it)"
    )
