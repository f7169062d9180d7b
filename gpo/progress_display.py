"""Showing a run's progress on stderr: live bars on a terminal, periodic lines in a pipe or a log.

On a terminal (rich) each task has a row (its step or its samples, the phase, the best dev score)
and an "all" row carries the run's calls, tokens, dollars, elapsed time and ETA. When stderr is
not a terminal, one line is written every `--progress-interval` seconds (default 30, or the
environment's GPO_PROGRESS_INTERVAL), and at once whenever a task starts, enters its test phase or
ends, e.g.

    [gpo optimize] step 2/4 · dev 37/64 scored · 212 calls · 41.2k tokens · $0.0000 ·
        elapsed 1m32s · ETA 2m10s                                   (one line in the log)

so the log of a long job shows progress at least twice a minute. Nothing goes to stdout, which
`--json` keeps for its one object. `--no-progress` shows nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from types import TracebackType
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from backends.errors import ConfigError
from gpo.endpoint_flags import BoundedNumber
from gpo.progress_tracker import ProgressTracker

PROGRESS_INTERVAL_ENV = "GPO_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
MAX_INTERVAL_S = 86_400.0
MAX_ROWS = 8  # more tasks than this: only the running ones get a row


def add_progress_arguments(group: Any, *, no_progress: bool = True) -> None:
    """`--progress-interval` (and `--no-progress` unless the parser has it already)."""
    if no_progress:
        group.add_argument(
            "--no-progress",
            action="store_true",
            help="show no progress on stderr (neither bars nor progress lines)",
        )
    group.add_argument(
        "--progress-interval",
        type=BoundedNumber(float, 0, MAX_INTERVAL_S, inclusive=False),
        metavar="S",
        help="seconds between progress lines when stderr is not a terminal (default: "
        f"${PROGRESS_INTERVAL_ENV} if set, else {DEFAULT_INTERVAL_S:g})",
    )


def progress_interval(args: argparse.Namespace) -> float:
    """The flag's interval, else the environment's, else the default."""
    flag = getattr(args, "progress_interval", None)
    if flag is not None:
        return float(flag)
    raw = os.environ.get(PROGRESS_INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= MAX_INTERVAL_S):
        raise ConfigError(
            f"{PROGRESS_INTERVAL_ENV}={raw!r}: expected seconds, a number above 0 and at most "
            f"{MAX_INTERVAL_S:g}"
        )
    return value


def display_mode(args: argparse.Namespace, console: Console) -> str:
    """ "off" (--no-progress), "bars" (stderr is a terminal) or "lines"."""
    if getattr(args, "no_progress", False):
        return "off"
    return "bars" if console.is_terminal else "lines"


class ProgressDisplay:
    """Draws `tracker` as `mode` says ("bars", "lines" or "off"); `tick()` about once a second."""

    def __init__(
        self,
        tracker: ProgressTracker,
        console: Console,
        mode: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        stream: TextIO | None = None,
    ) -> None:
        self.tracker = tracker
        self.mode = mode
        self.interval_s = interval_s
        self.stream = stream if stream is not None else sys.stderr
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            disable=mode != "bars",
        )
        self.rows: dict[str, TaskID] = {}
        self.overall: TaskID | None = None
        self._last_line: float | None = None
        self._last_key: tuple[Any, ...] | None = None
        self._last_text = ""

    def __enter__(self) -> ProgressDisplay:
        self.progress.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.mode == "bars":
            self.tick()
        elif self.mode == "lines" and kind is None:  # where the run ended, unless just said
            self.tracker.observe()
            line = self.tracker.line()
            if line != self._last_text:
                self._write(line)
        self.progress.__exit__(kind, error, trace)

    def tick(self) -> None:
        """Measure, then redraw the bars or write a line when one is due."""
        if self.mode == "off":
            return
        self.tracker.observe()
        if self.mode == "bars":
            self._draw_bars()
            return
        now = self.tracker.clock()
        key = self.tracker.phase_key()
        due = self._last_line is None or now - self._last_line >= self.interval_s
        if due or key != self._last_key:
            self._write(self.tracker.line())
            self._last_line, self._last_key = now, key

    def _write(self, line: str) -> None:
        self._last_text = line
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not stop the run
            self.mode = "off"

    def _draw_bars(self) -> None:
        tracker = self.tracker
        few = len(tracker.tasks) <= MAX_ROWS
        for name, state in tracker.tasks.items():
            if state.steps_total:
                done, total = state.steps_done, state.steps_total
            else:
                done, total = state.phase_done, state.phase_total
            detail = tracker.phase_text(state) or state.status
            if state.best_dev is not None:
                detail += f" · best dev {100 * state.best_dev:.1f}"
            visible = few or state.status == "running"
            if name not in self.rows:
                self.rows[name] = self.progress.add_task(name, total=max(total, 1), detail="")
            self.progress.update(
                self.rows[name], completed=done, total=max(total, 1), detail=detail, visible=visible
            )
        done = tracker.units_done
        total = max(done + tracker.remaining, 1)
        detail = f"{tracker.usage_text()} · {tracker.timing_text()}"
        if self.overall is None:
            self.overall = self.progress.add_task("all", total=total, detail="")
        self.progress.update(self.overall, completed=min(done, total), total=total, detail=detail)

    async def run_forever(self, period_s: float = 1.0) -> None:
        """Tick every `period_s` seconds until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(period_s)
