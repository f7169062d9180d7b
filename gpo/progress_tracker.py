"""What a run in progress has done and has left: steps, the current phase, calls, tokens, dollars.

`ProgressTracker` is told about the run from two sides: as the loop's `ProgressListener` (a task
started, a step finished, a task finished) and by `ProgressEvaluator`, a thin wrapper around the
scoring evaluator that reports each evaluation's size and every scored (prompt, sample) chain. The
ledger of the run's engines gives calls, tokens, dollars and the optimizer's generated sequences.

Each task (or sweep cell) has a `WorkPlan`, the units it takes (`gpo.progress_eta` says what a
unit is): the initial prompt on dev, per step the candidates on dev plus the optimizer's
sequences (and the reflection batch or summary prompt where the method has them), and the test
prompts on test. Remaining work is the plan from the last finished step on, less the chains scored
since; a finished or budget-stopped task has none left. From this and the measured rate comes the
ETA, and `line()` is the one-line progress the display prints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.race_runner import RaceOutcome, race_prompts
from engine.racing import RacingSettings
from gpo.config import OptimizerConfig
from gpo.ledger_view import engines_snapshot
from gpo.optimizer import OPTIMIZING_PHASE
from gpo.progress_eta import DEFAULT_TAU_S, RateEstimator, format_count, format_duration
from gpo.step_plan import total_steps

_SPLIT_NAMES = {"eval": "dev", "dev": "dev", "train": "train batch", "test": "test"}


@dataclass(frozen=True, slots=True)
class WorkPlan:
    """Units of work of one task: `initial` before the first step, `per_step` for each of
    `steps` steps, `test` at the end."""

    initial: int
    per_step: int
    steps: int
    test: int

    def units_from(self, steps_done: int) -> int:
        """Units from the start of step `steps_done` (the initial scoring included at 0)."""
        left = max(0, self.steps - steps_done)
        return (self.initial if steps_done == 0 else 0) + self.per_step * left + self.test


def plan_task(config: OptimizerConfig, task: Any) -> WorkPlan:
    """The plan of optimizing (or, for a fixed-prompt method, scoring) `task` with `config`."""
    dev = len(task.split("eval")[: config.dev_size])
    test = len(task.split("test")[: config.test_size]) if config.evaluate_test else 0
    if not config.optimize:
        return WorkPlan(initial=dev, per_step=0, steps=0, test=test)
    train = len(task.split("train")[: config.train_size])
    steps = total_steps(config, train)
    per_step = config.candidates * dev + config.candidates
    if config.reflection:
        per_step += min(config.batch_size, train) + 1
    elif config.direction == "summary":
        per_step += dev + 1
    test_prompts = 2 + (steps + 1 if config.test_every_step else 0)
    return WorkPlan(initial=dev, per_step=per_step, steps=steps, test=test_prompts * test)


@dataclass(slots=True)
class _TaskProgress:
    plan: WorkPlan
    status: str = "waiting"  # waiting, running, finished, stopped
    steps_total: int = 0
    steps_done: int = 0
    phase: str = ""
    phase_done: int = 0
    phase_total: int = 0
    evaluations: int = 0
    segment_items: int = 0  # chains scored since the last finished step
    best_dev: float | None = None

    @property
    def remaining(self) -> int:
        if self.status in ("finished", "stopped"):
            return 0
        return max(0, self.plan.units_from(self.steps_done) - self.segment_items)


class ProgressTracker:
    """The state of a run in progress, for the terminal bars and the piped progress lines."""

    def __init__(
        self,
        command: str,
        plans: Mapping[str, WorkPlan],
        *,
        clock: Callable[[], float] = time.monotonic,
        tau_s: float = DEFAULT_TAU_S,
    ) -> None:
        self.command = command
        self.tasks = {name: _TaskProgress(plan) for name, plan in plans.items()}
        self.clock = clock
        self.started = clock()
        self.estimator = RateEstimator(tau_s)
        self.engines: Sequence[Any] = ()
        self.items = 0
        self.totals: dict[str, Any] = {}
        self.optimizer_sequences = 0

    # -- the loop's ProgressListener -------------------------------------------------------

    def _task(self, name: str) -> _TaskProgress:
        if name not in self.tasks:  # not planned (read back, or a caller without plans)
            self.tasks[name] = _TaskProgress(WorkPlan(0, 0, 0, 0))
        return self.tasks[name]

    def task_started(self, task: str, total_steps: int) -> None:
        state = self._task(task)
        state.status, state.steps_total, state.steps_done = "running", total_steps, 0
        state.segment_items, state.phase = 0, "starting"

    def step_finished(self, task: str, step: int, total_steps: int, best_dev: float) -> None:
        state = self._task(task)
        state.steps_done, state.steps_total = step + 1, total_steps
        state.segment_items, state.best_dev = 0, best_dev

    def task_finished(self, task: str, result: Any) -> None:
        state = self._task(task)
        state.status = "finished" if result.status == "finished" else "stopped"
        state.steps_done = result.steps_done
        state.best_dev = result.final_dev
        state.phase = "done" if state.status == "finished" else "stopped"
        state.phase_done = state.phase_total = 0

    # -- the evaluator's reports -----------------------------------------------------------

    def evaluation_started(self, task: str, split: str, total: int) -> None:
        state = self._task(task)
        if state.status == "waiting":
            state.status = "running"
        name = _SPLIT_NAMES.get(split, split)
        first = state.evaluations == 0 and state.steps_done == 0 and state.plan.steps > 0
        first = first and split in ("eval", "dev")
        state.phase = f"initial {name}" if first else name
        state.phase_done, state.phase_total = 0, total
        state.evaluations += 1

    def item_scored(self, task: str) -> None:
        state = self._task(task)
        state.phase_done += 1
        state.segment_items += 1
        self.items += 1

    def evaluation_finished(self, task: str) -> None:
        state = self._task(task)
        if state.status == "running" and state.steps_done < state.plan.steps:
            state.phase = "optimizer"
            state.phase_done = state.phase_total = 0

    # -- measuring -------------------------------------------------------------------------

    def observe(self) -> None:
        """Read the ledger and feed the rate estimator (call about once a second)."""
        if self.engines:
            snapshot = engines_snapshot(self.engines)
            self.totals = snapshot["totals"]
            self.optimizer_sequences = sum(
                int(row.get("requests", 0)) + int(row.get("cache_hits", 0))
                for row in snapshot.get("rows", [])
                if row.get("phase") == OPTIMIZING_PHASE
            )
        self.estimator.observe(self.clock(), self.units_done)

    @property
    def units_done(self) -> int:
        return self.items + self.optimizer_sequences

    @property
    def remaining(self) -> int:
        return sum(state.remaining for state in self.tasks.values())

    def eta_s(self) -> float | None:
        return self.estimator.eta_s(self.remaining)

    def elapsed_s(self) -> float:
        return self.clock() - self.started

    # -- words -----------------------------------------------------------------------------

    def running(self) -> list[tuple[str, _TaskProgress]]:
        return [(name, s) for name, s in self.tasks.items() if s.status == "running"]

    def phase_text(self, state: _TaskProgress) -> str:
        """`step 2/4 · dev 37/64 scored`, `optimizer`, `test 5/16 scored`..."""
        parts = []
        stepping = state.phase not in ("test", "starting") and not state.phase.startswith("initial")
        if state.steps_total and state.steps_done < state.steps_total and stepping:
            parts.append(f"step {state.steps_done + 1}/{state.steps_total}")
        if state.phase_total:
            scored = f"{state.phase_done}/{state.phase_total} scored"
            parts.append(f"{state.phase} {scored}" if state.phase else scored)
        elif state.phase:
            parts.append(state.phase)
        return " · ".join(parts)

    def headline(self) -> str:
        """Where the run is: its step and phase, or for several tasks how many are done."""
        states = list(self.tasks.values())
        running = self.running()
        if len(states) == 1:
            status = states[0].status
            return self.phase_text(states[0]) or ("starting" if status == "waiting" else status)
        done = sum(1 for s in states if s.status in ("finished", "stopped"))
        steps = sum(s.steps_done for s in states)
        steps_total = sum(max(s.steps_total, s.plan.steps) for s in states)
        words = "cells" if self.command == "reproduce" else "tasks"
        parts = [f"{words} {done}/{len(states)} done"]
        if steps_total:
            parts.append(f"steps {steps}/{steps_total}")
        if running:
            name, state = running[0]
            more = f" (+{len(running) - 1} running)" if len(running) > 1 else ""
            parts.append(f"{name}: {self.phase_text(state)}{more}")
        return " · ".join(parts)

    def usage_text(self) -> str:
        """`212 calls · 41.2k tokens · $0.0000`."""
        totals = self.totals
        calls = f"{format_count(totals.get('requests', 0))} calls"
        hits = int(totals.get("cache_hits", 0) or 0)
        if hits:
            calls += f" (+{format_count(hits)} cached)"
        usd = float(totals.get("cost_usd", 0.0) or 0.0)
        dollars = f"${usd:.2f}" if usd >= 1 else f"${usd:.4f}"
        return f"{calls} · {format_count(totals.get('total_tokens', 0))} tokens · {dollars}"

    def timing_text(self) -> str:
        eta = self.eta_s()
        return f"elapsed {format_duration(self.elapsed_s())} · ETA {format_duration(eta)}"

    def line(self) -> str:
        """The one-line progress of piped output."""
        return (
            f"[gpo {self.command}] {self.headline()} · {self.usage_text()} · {self.timing_text()}"
        )

    def phase_key(self) -> tuple[Any, ...]:
        """Changes when a task starts or ends, or enters the initial, step or test phase."""
        coarse = []
        for name, state in self.tasks.items():
            if state.phase.startswith("initial"):
                kind = "initial"
            elif state.phase in ("test", "done", "stopped"):
                kind = state.phase
            else:
                kind = "steps" if state.status == "running" else state.status
            coarse.append((name, kind))
        return tuple(coarse)


class ProgressEvaluator:
    """The scoring evaluator, reporting each evaluation's size and each scored chain to
    `tracker` under `key` (default: the task's name)."""

    def __init__(self, inner: Any, tracker: ProgressTracker, key: str | None = None) -> None:
        self.inner = inner
        self.tracker = tracker
        self.key = key

    async def evaluate(
        self,
        task: Any,
        prompts: Sequence[str],
        split: str = "eval",
        *,
        limit: int | None = None,
        on_record: Callable[[Any], None] | None = None,
        **options: Any,
    ) -> Any:
        key = self.key or task.name
        samples = task.split(split)
        count = len(samples) if limit is None else min(limit, len(samples))
        self.tracker.evaluation_started(key, split, len(prompts) * count)

        def counted(record: Any) -> None:
            self.tracker.item_scored(key)
            if on_record is not None:
                on_record(record)

        try:
            return await self.inner.evaluate(
                task, prompts, split, limit=limit, on_record=counted, **options
            )
        finally:
            self.tracker.evaluation_finished(key)

    async def race(
        self,
        task: Any,
        prompts: Sequence[str],
        split: str,
        settings: RacingSettings,
    ) -> tuple[Any, RaceOutcome]:
        """Race `prompts` through the inner evaluator (see `engine.race_runner`), counted here.

        The planned work is every chain, as without racing: the chains racing saves end the
        phase early, so the ETA errs long, never short."""
        key = self.key or task.name
        self.tracker.evaluation_started(key, split, len(prompts) * len(task.split(split)))
        try:
            return await race_prompts(
                self.inner,
                task,
                prompts,
                split,
                settings,
                on_record=lambda _: self.tracker.item_scored(key),
            )
        finally:
            self.tracker.evaluation_finished(key)
