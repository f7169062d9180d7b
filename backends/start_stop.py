"""`with` and `async with` for server classes that define `start` and `stop`.

A server (a managed subprocess, the in-process simulated server, a vLLM or llama.cpp front) is
started on entering the block and stopped on leaving it, whatever ends the block.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncStartStopContext:
    """`async with` for a server class that defines async `start` and `stop`."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


class StartStopContext(AsyncStartStopContext):
    """`async with` and `with` for a server class that defines `start`/`stop` (async) and
    `start_sync`/`stop_sync`."""

    def __enter__(self) -> Self:
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop_sync()
