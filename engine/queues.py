"""The engine's waiting requests: priorities, one queued request, and the queues they wait in.

Queues are kept per (priority, sampling settings, batchable), so that requests that can share a
call sit together. `take` serves the most urgent non-empty queue (the lowest `Priority`; the
oldest queue among equals), oldest request first: up to the room left in the window and the
largest batch for a batchable queue (prompts that can travel as one prompt list), one request
otherwise.
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import IntEnum

from backends.protocol import Completion, Request, SamplingParams
from engine.retry_policy import RetryHistory


class Priority(IntEnum):
    """Lower values are served first."""

    OPTIMIZER = 0
    FOLLOW_UP = 10
    SCORING = 20


class QueuedRequest:
    """One request waiting for its answer, and the future its callers wait on. `prompt`: the
    text it travels as in a prompt list (None for a chat sent as messages); `solo`: it must
    travel alone (a list call with it failed); `split`: that list, while this one has not been
    answered alone (`engine.list_fallback`)."""

    __slots__ = (
        "future",
        "history",
        "key",
        "phase",
        "priority",
        "prompt",
        "request",
        "solo",
        "split",
    )

    def __init__(
        self,
        request: Request,
        key: bytes | None,
        prompt: str | None,
        future: asyncio.Future[Completion],
        priority: int,
        phase: str,
    ) -> None:
        self.request = request
        self.key = key
        self.prompt = prompt
        self.future = future
        self.priority = priority
        self.phase = phase
        self.history = RetryHistory()
        self.solo = False
        self.split: object | None = None


QueueKey = tuple[int, SamplingParams, bool]


class RequestQueues:
    """FIFO queues of `QueuedRequest`s by (priority, sampling settings, batchable)."""

    def __init__(self) -> None:
        self._queues: dict[QueueKey, deque[QueuedRequest]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def put(self, item: QueuedRequest, batchable: bool) -> None:
        key = (item.priority, item.request.params, batchable)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(item)
        self._count += 1

    def take(self, room: int, max_batch: int) -> tuple[SamplingParams, list[QueuedRequest]]:
        """The sampling settings and requests of the next call (at least one request; call
        only while some wait)."""
        key, queue = min(
            ((key, queue) for key, queue in self._queues.items() if queue),
            key=lambda entry: entry[0][0],
        )
        _, params, batchable = key
        take = min(room, max_batch, len(queue)) if batchable else 1
        items = [queue.popleft() for _ in range(max(1, take))]
        self._count -= len(items)
        if not queue:
            del self._queues[key]
        return params, items

    def drain(self) -> list[QueuedRequest]:
        """Every waiting request, oldest first per queue; the queues are left empty."""
        items = [item for queue in self._queues.values() for item in queue]
        self._queues.clear()
        self._count = 0
        return items
