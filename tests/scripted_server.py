"""A tiny OpenAI-compatible server whose answers a test scripts exactly (status, headers, body).

The simulated vLLM server is the load and fault instrument; this one is for checking how the
client classifies one precise answer, and how the engine reacts to a precise sequence of them.
`raw_server` goes below HTTP, for peers that cut a connection at a precise moment.
"""

from __future__ import annotations

import inspect
import socket
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import orjson
from aiohttp import web

Responder = Callable[[dict[str, Any]], Any]
"""Returns a response, None (echo), or an awaitable of either."""


def echo_completion(body: dict[str, Any]) -> web.Response:
    """Answer every prompt with 'echo:<prompt>' and usage of one token per character."""
    prompts = body.get("prompt")
    if "messages" in body:
        prompts = [body["messages"][-1]["content"]]
    elif isinstance(prompts, str):
        prompts = [prompts]
    n = int(body.get("n", 1))
    choices = []
    completion_tokens = 0
    for p_index, prompt in enumerate(prompts):
        for c_index in range(n):
            text = f"echo:{prompt}" + (f"#{c_index}" if n > 1 else "")
            completion_tokens += len(text)
            entry: dict[str, Any] = {"index": p_index * n + c_index, "finish_reason": "stop"}
            if "messages" in body:
                entry["message"] = {"role": "assistant", "content": text}
            else:
                entry["text"] = text
            choices.append(entry)
    usage = {
        "prompt_tokens": sum(len(p) for p in prompts),
        "completion_tokens": completion_tokens,
    }
    return web.Response(
        body=orjson.dumps({"choices": choices, "usage": usage}), content_type="application/json"
    )


def echo_embeddings(body: dict[str, Any]) -> web.Response:
    """Embed each input as [length, index, 1.0], with usage of one token per character."""
    texts = body.get("input")
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    data = [
        {"index": i, "embedding": [float(len(text)), float(i), 1.0]} for i, text in enumerate(texts)
    ]
    usage = {
        "prompt_tokens": sum(len(t) for t in texts),
        "total_tokens": sum(len(t) for t in texts),
    }
    return web.Response(
        body=orjson.dumps({"data": data, "usage": usage}), content_type="application/json"
    )


class ScriptedServer:
    """Serves queued responders in order, then falls back to echoing."""

    def __init__(self) -> None:
        self.script: deque[Responder] = deque()
        self.bodies: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else {}
        self.bodies.append(body)
        self.headers.append(dict(request.headers))
        if self.script:
            answer = self.script.popleft()(body)
            if inspect.isawaitable(answer):
                answer = await answer
            if answer is not None:
                return answer
        if request.path.endswith("/embeddings"):
            return echo_embeddings(body)
        return echo_completion(body)

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "scripted-model"}]})

    async def _apply_template(self, request: web.Request) -> web.Response:
        """llama.cpp's `/apply-template` in ChatML, so client-side ChatML passes its check."""
        from backends.chat_template import render_chatml

        body = orjson.loads(await request.read())
        turns = [(m["role"], m["content"]) for m in body["messages"]]
        return web.json_response({"prompt": render_chatml(turns)})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/apply-template", self._apply_template)
        app.router.add_post("/v1/completions", self._handle)
        app.router.add_post("/v1/chat/completions", self._handle)
        app.router.add_post("/v1/embeddings", self._handle)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def raw_server(on_connection: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback listener that hands each accepted connection to `on_connection`."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            on_connection(connection)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        with suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        thread.join(60)
        assert not thread.is_alive()
