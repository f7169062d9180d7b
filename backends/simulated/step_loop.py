"""Drives the step model in real time: one asyncio task plays the GPU.

Each iteration plans a step, sleeps until that step's end, applies it and hands finished
sequences to their owners. Sleeps aim at absolute deadlines (`anchor + simulated time /
time_scale`), so the loop's own CPU time and timer slack do not accumulate into the simulated
clock; if the loop falls behind by more than `MAX_CATCH_UP_S` (the host was busy), the lost time
is given up (re-anchored) instead of being made good with a burst of zero-length steps. When
there is no work the task waits on an event and the clock re-anchors on the next submission.
Requests arriving during a step join the waiting queue and are admitted at the next step, as in
vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from backends.simulated.batching import ContinuousBatcher, SequenceWork

logger = logging.getLogger(__name__)

MAX_CATCH_UP_S = 0.05
"""Most real seconds the loop may run behind its schedule and still make the time good."""


class StepLoop:
    """Owns a `ContinuousBatcher` and the task that advances it in (scaled) real time."""

    def __init__(
        self,
        batcher: ContinuousBatcher,
        time_scale: float,
        on_finished: Callable[[SequenceWork], None],
    ) -> None:
        self.batcher = batcher
        self._time_scale = time_scale
        self._on_finished = on_finished
        self._work_ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.simulated_s = 0.0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-step-loop")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, sequences: Iterable[SequenceWork]) -> None:
        for seq in sequences:
            self.batcher.submit(seq)
        self._work_ready.set()

    def cancel(self, sequences: Iterable[SequenceWork]) -> None:
        for seq in sequences:
            self.batcher.cancel(seq)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        batcher = self.batcher
        scale = self._time_scale
        anchor_real = loop.time()
        anchor_sim = self.simulated_s
        while True:
            if not batcher.has_work:
                self._work_ready.clear()
                await self._work_ready.wait()
                anchor_real = loop.time()
                anchor_sim = self.simulated_s
                continue
            plan = batcher.plan_step()
            if plan.is_empty:
                # Only cancelled sequences were waiting; the queue is clean now.
                await asyncio.sleep(0)
                continue
            self.simulated_s += plan.duration_s
            deadline = anchor_real + (self.simulated_s - anchor_sim) / scale
            delay = deadline - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                if delay < -MAX_CATCH_UP_S:
                    anchor_real = loop.time()
                    anchor_sim = self.simulated_s
                await asyncio.sleep(0)
            for seq in batcher.complete_step(plan):
                try:
                    self._on_finished(seq)
                except Exception:  # an owner's bug must not stop the simulated GPU
                    logger.exception("finishing a simulated sequence failed")
