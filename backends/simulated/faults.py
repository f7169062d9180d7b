"""Injected faults: which generation request gets which fault, and how each one is delivered.

One uniform draw per generation request, in arrival order, from a generator seeded with
`FaultRates.seed`, picks at most one fault by the cumulative rates; the same config and the same
request sequence give the same faults. A faulty request is never scheduled and never counted as
served, except `slow_body`, which is a correct answer delivered slowly. What a plain HTTP client
observes:

- `server_error`: HTTP 500 or 503 with an OpenAI-style error body.
- `connection_reset`: the TCP connection is reset (SO_LINGER 0, then abort) before any byte.
- `hang`: no answer until the client disconnects, `hang_seconds` pass (then the connection is
  dropped) or the server stops.
- `malformed_json`: HTTP 200, `application/json`, a body that is not valid JSON.
- `truncated_body`: HTTP 200 with a Content-Length, then the connection closes halfway through.
- `slow_body`: the full, valid answer, written in chunks spread over `slow_body_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from enum import StrEnum

import orjson
from aiohttp import web

from backends.simulated.config import FaultRates

SLOW_BODY_CHUNKS = 10


class FaultKind(StrEnum):
    SERVER_ERROR = "server_error"
    CONNECTION_RESET = "connection_reset"
    HANG = "hang"
    MALFORMED_JSON = "malformed_json"
    TRUNCATED_BODY = "truncated_body"
    SLOW_BODY = "slow_body"


class FaultInjector:
    """Draws the fault (or None) for each generation request."""

    def __init__(self, rates: FaultRates) -> None:
        self._enabled = rates.enabled
        self._rng = random.Random(rates.seed)
        self._thresholds: list[tuple[float, FaultKind]] = []
        total = 0.0
        for name, rate in rates.rates().items():
            if rate > 0:
                total += rate
                self._thresholds.append((total, FaultKind(name)))

    def draw(self) -> FaultKind | None:
        if not self._enabled:
            return None
        value = self._rng.random()
        for threshold, kind in self._thresholds:
            if value < threshold:
                return kind
        return None

    def server_error_status(self) -> int:
        return 503 if self._rng.random() < 0.5 else 500


def error_body(message: str, error_type: str, code: int | str) -> bytes:
    """The JSON error body vLLM's OpenAI server sends (OpenAI's shape: {"error": {...}})."""
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    )


def server_error_response(status: int) -> web.Response:
    return web.Response(
        status=status,
        body=error_body("Simulated server failure (injected fault)", "InternalServerError", status),
        content_type="application/json",
    )


def malformed_json_response() -> web.Response:
    return web.Response(
        status=200,
        body=b'{"id": "cmpl-broken", "object": "text_completion", "choices": [{"text": "So the',
        content_type="application/json",
    )


def reset_connection(request: web.BaseRequest) -> None:
    """Reset the client's TCP connection now: an RST rather than an orderly close."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def send_truncated(request: web.BaseRequest, body: bytes) -> None:
    """Announce the full length, send half of the body, then close the connection.

    The caller must not return a response afterwards (raise `CancelledError`, as aiohttp does
    for a client that went away).
    """
    response = web.StreamResponse(status=200)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    await response.write(body[: len(body) // 2])
    if request.transport is not None:
        request.transport.close()


async def write_slowly(
    request: web.BaseRequest,
    body: bytes,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> web.StreamResponse:
    """Send a complete, valid body in `SLOW_BODY_CHUNKS` pieces with pauses between them."""
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "application/json"
    response.content_length = len(body)
    await response.prepare(request)
    size = max(1, -(-len(body) // SLOW_BODY_CHUNKS))
    pieces = -(-len(body) // size)
    pause = seconds / max(1, pieces - 1)
    for start in range(0, len(body), size):
        if start:
            await asyncio.sleep(pause)
        await response.write(body[start : start + size])
    await response.write_eof()
    return response
