"""SIGTERM stops a run as Ctrl-C does: the work in flight is cancelled, finished work is saved.

`kill PID`, a batch scheduler's time limit, `docker stop` and systemd all send SIGTERM, whose
default action ends the process at once: the run directory would be left saying "running" and
the session's spend would never be written. `TerminationGuard` catches it instead.

Inside the event loop the guarded coroutine registers itself (`watch`); SIGTERM then cancels it
while it runs, so every `finally` and `async with` on the way out runs (engines closed, managed
servers stopped, state and ledger written). Outside the loop (checking flags, printing the
summary) SIGTERM raises `KeyboardInterrupt` where the program stands, as Ctrl-C would. It does
not depend on how SIGINT is set up (a job started with `&` by a script ignores SIGINT).
`received` tells the caller that the stop came from SIGTERM, so it can exit with 143 (128 + 15)
as is conventional. A second SIGTERM while stopping is ignored; SIGKILL still ends the process
at once.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType, TracebackType
from typing import Any

EXIT_TERMINATED = 128 + signal.SIGTERM


class TerminationGuard:
    """While entered, SIGTERM cancels the watched task (or interrupts the main thread)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: Any = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> TerminationGuard:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)

    def watch(self) -> None:
        """Call from the coroutine that SIGTERM should cancel, inside its event loop."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        task, loop = self._task, self._loop
        if task is not None and loop is not None and not task.done() and not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)
            return
        raise KeyboardInterrupt
