"""The server's own load, read from vLLM's Prometheus `/metrics` for the measured window.

`ServerLoadProbe` polls `GET /metrics` beside `/v1` every `interval_s` while its engine is open
and hands `vllm:num_requests_running` and `vllm:num_requests_waiting` (summed over models and
engines) to `MeasuredWindow.on_server_load`. A server without them (llama.cpp, a hosted API: a
404, or text without those names) is asked `MAX_MISSES` times and then left alone; the window
then follows latency alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from engine.adaptive_window import MeasuredWindow

MAX_MISSES = 3
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"


def parse_vllm_load(text: str) -> tuple[float, float] | None:
    """(running, waiting) sequences from Prometheus text; None when either is absent."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            continue
        name = line.partition("{")[0].partition(" ")[0]
        if name not in (RUNNING, WAITING):
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        totals[name] = totals.get(name, 0.0) + value
    if RUNNING not in totals or WAITING not in totals:
        return None
    return totals[RUNNING], totals[WAITING]


class ServerLoadProbe:
    """Polls a server's load into a measured window; `start` it, `await stop()` it."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[str | None]],
        window: MeasuredWindow,
        batch: int,
        interval_s: float = 0.25,
    ) -> None:
        self._fetch = fetch
        self._window = window
        self._batch = batch
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.readings = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        misses = 0
        while misses < MAX_MISSES:
            try:
                text = await self._fetch()
            except Exception:  # a probe never stops the engine
                text = None
            load = parse_vllm_load(text) if text else None
            if load is None:
                misses += 1
            else:
                misses = 0
                self.readings += 1
                self._window.on_server_load(load[0], load[1], self._batch)
            await asyncio.sleep(self._interval_s)
