"""Waiting in tests without guessing how long things take on a busy machine.

A test that waits on a process, a socket or a clock polls the condition it needs in a bounded
loop with a generous deadline (`DEADLINE_S`): on an idle machine the loop ends at once, on a
loaded one it waits as long as it must, and only a real hang reaches the deadline. Nothing here
sleeps a guessed time and then hopes.

Probing a server that is starting, stopping or crashing can fail in many ways besides a refused
connection: a reset while the response is read (`ConnectionResetError`), a closed connection
before the status line (`http.client.RemoteDisconnected`, `BadStatusLine`), a cut body
(`IncompleteRead`), a timeout. `probe` sorts every outcome into "up" (an HTTP answer, whatever
its status), "down" (the connection failed) or "unknown" (no answer in time: a slow server is
not a stopped one).
"""

from __future__ import annotations

import asyncio
import http.client
import inspect
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Literal

DEADLINE_S = 120.0
"""How long a test waits for something that takes well under a second on an idle machine."""

POLL_S = 0.02

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException)
"""Everything a loopback HTTP call can raise when the peer is not (or no longer) serving:
`OSError` covers `URLError`, every `ConnectionError` (refused, reset, aborted), `RemoteDisconnected`
and timeouts; `HTTPException` covers `BadStatusLine` and `IncompleteRead`."""

Probe = Literal["up", "down", "unknown"]


def wait_until(
    condition: Callable[[], object], *, within_s: float = DEADLINE_S, interval_s: float = POLL_S
) -> bool:
    """Poll `condition` until it is true (True) or `within_s` passes (False)."""
    deadline = time.monotonic() + within_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


async def wait_until_async(
    condition: Callable[[], object | Awaitable[object]],
    *,
    within_s: float = DEADLINE_S,
    interval_s: float = POLL_S,
) -> bool:
    """`wait_until` for the event loop; `condition` may be a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(interval_s)


def _timed_out(error: BaseException) -> bool:
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason
    return isinstance(error, (TimeoutError, socket.timeout))


def probe(url: str, timeout_s: float = 10.0) -> Probe:
    """GET `url` once: "up" on any HTTP answer, "down" on a failed connection, else "unknown"."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            response.read()
        return "up"
    except urllib.error.HTTPError:
        return "up"
    except CONNECTION_ERRORS as error:
        return "unknown" if _timed_out(error) else "down"


def wait_until_refused(url: str, within_s: float = DEADLINE_S) -> bool:
    """Until the server at `url` (a base URL) stops answering `/health`."""
    return wait_until(lambda: probe(f"{url}/health") == "down", within_s=within_s)


def wait_until_serving(url: str, within_s: float = DEADLINE_S) -> bool:
    """Until the server at `url` (a base URL) answers `/health`."""
    return wait_until(lambda: probe(f"{url}/health") == "up", within_s=within_s)


def refuses_connections(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` now: one blocking connect, no event loop involved.

    On loopback a connect to a closed port fails at once, so the answer is about this instant,
    not about some later moment a busy scheduler picked.
    """
    try:
        with socket.create_connection((host, port), timeout=DEADLINE_S):
            return False
    except ConnectionRefusedError:
        return True
