"""Contenders "engine-auto" and "engine-wN": the engine with no window configured (found by
measurement, `engine.adaptive_window`) and with hand-set windows (`--scorer-concurrency N`),
for the window workload (W7); otherwise the engine contender's run, rounds and prompt lists."""

from __future__ import annotations

from functools import partial

from perf.contenders.base import Contender, RunContext, run_async
from perf.contenders.engine import _engine_rounds

HAND_SET_WINDOWS = (16, 64, 128, 256)
MEASURED = "measured"


def _run(window: int | str, ctx: RunContext) -> None:
    run_async(_engine_rounds(ctx, window), uvloop_loop=True)


def _contender(window: int | str) -> Contender:
    if window == MEASURED:
        name, pattern = "engine-auto", "this project, no window configured: found by measurement"
    else:
        name, pattern = f"engine-w{window}", f"this project, window set by hand to {window}"
    return Contender(name, pattern, "round", partial(_run, window), cache="file")


CONTENDERS = tuple(_contender(window) for window in (MEASURED, *HAND_SET_WINDOWS))
WINDOW_CONTENDERS = tuple(contender.name for contender in CONTENDERS)
