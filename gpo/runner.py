"""A whole optimization run: tasks of a group, the run directory, resume, and the summary.

`run_optimization` takes engines that are already open (the CLI opens them), runs the loop for
each task, keeps the run directory current (state; the ledger every `ledger_interval_s` seconds
and after every step, so a killed session's spend is kept; per-task files) and returns the
summary that `summary.json` holds: per-task results, group averages as the paper reports them,
tokens, dollars, wall time and improvement per dollar.

Resuming: tasks whose `result.json` says "finished" are read back and not run again; any other
task is run from its start, its answered requests replayed from the response cache for free.
What earlier sessions spent is carried over into the engines' ledgers: budgets hold for the run.

With `shared_ledger` the engines also serve other runs at the same time (`gpo reproduce` runs
its cells through one engine set): their ledger is the caller's to keep and carry over, so this
run writes no `ledger.json`, carries nothing over, and its summary's spend fields are None.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from benchmarks import aggregate, load_task
from engine.engine import Engine
from engine.evaluator import Evaluator, EvaluatorSettings
from gpo.budget_guard import session_budgets
from gpo.config import OptimizerConfig
from gpo.embedders import Embedder, EmbedderConfig, make_embedder
from gpo.format_draws import draw_run_format_indices
from gpo.interfaces import GenerationEngine, ProgressListener, ScoringEvaluator, SilentProgress
from gpo.ledger_view import engines_snapshot, run_totals
from gpo.optimizer import PromptOptimizer
from gpo.results import TaskResult
from gpo.run_dir import RunDirectory
from gpo.scoring_rules import ScoringRules

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What to run: tasks (already expanded from groups), the loop's config, the embedder,
    the scorer's settings (prompt layout, max tokens) and how many tasks run at once."""

    tasks: tuple[str, ...]
    optimizer: OptimizerConfig
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    scoring: EvaluatorSettings = field(default_factory=EvaluatorSettings)
    data_dir: str | None = None
    tasks_at_once: int = 1
    ledger_interval_s: float = 1.0
    rules: ScoringRules = field(default_factory=ScoringRules)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _mean_or_none(values: dict[str, float | None]) -> dict[str, float]:
    present = {task: value for task, value in values.items() if value is not None}
    return aggregate(present) if present else {}


def summarise(
    spec: RunSpec,
    results: Sequence[TaskResult],
    session_ledger: dict[str, Any],
    earlier_ledgers: Sequence[dict[str, Any]],
) -> dict[str, Any]:
    """The run's summary: per-task results, group averages, cost, improvement per dollar."""
    groups = {
        "initial_dev": _mean_or_none({r.task: r.initial_dev for r in results}),
        "final_dev": _mean_or_none({r.task: r.final_dev for r in results}),
        "initial_test": _mean_or_none({r.task: r.initial_test for r in results}),
        "final_test": _mean_or_none({r.task: r.final_test for r in results}),
    }
    totals = run_totals([*earlier_ledgers, session_ledger])
    improvement = _improvement(results)
    cost = float(totals.get("cost_usd", 0.0) or 0.0)
    tokens = int(totals.get("total_tokens", 0) or 0)
    stopped = [r.task for r in results if r.status != "finished"]
    return {
        "method": spec.optimizer.method,
        "status": "stopped" if stopped else "finished",
        "stopped_tasks": stopped,
        "tasks": [r.to_json() for r in results],
        "groups": groups,
        "improvement_points": improvement,
        "improvement_per_usd": improvement / cost if improvement is not None and cost > 0 else None,
        "improvement_per_mtok": (
            improvement / (tokens / 1e6) if improvement is not None and tokens > 0 else None
        ),
        "cost_usd": cost,
        "total_tokens": tokens,
        "run_totals": totals,
        "session_ledger": session_ledger,
    }


def _improvement(results: Sequence[TaskResult]) -> float | None:
    """Mean test-score gain of the final over the initial prompt, in percentage points."""
    pairs = [
        (r.final_test, r.initial_test)
        for r in results
        if r.final_test is not None and r.initial_test is not None
    ]
    if not pairs:
        return None
    return 100 * sum(final - initial for final, initial in pairs) / len(pairs)


def carry_over_spend(engines: Sequence[Any], earlier: Sequence[dict[str, Any]]) -> None:
    """Count the earlier sessions' spend against the budgets of every distinct ledger."""
    if not earlier:
        return
    totals = run_totals(earlier)
    ledgers: list[Any] = []
    for engine in engines:
        ledger = getattr(engine, "ledger", None)
        if ledger is not None and all(ledger is not seen for seen in ledgers):
            ledgers.append(ledger)
            ledger.carry_over(
                int(totals.get("total_tokens", 0) or 0), float(totals.get("cost_usd", 0.0) or 0.0)
            )


async def write_ledger_every(
    run_dir: RunDirectory, engines: Sequence[Any], interval_s: float
) -> None:
    """Rewrite the run directory's ledger whenever it changed, every `interval_s` seconds."""
    written: Any = None
    while True:
        await asyncio.sleep(interval_s)
        snapshot = engines_snapshot(engines)
        if snapshot["totals"] == written:
            continue
        try:
            run_dir.write_ledger(snapshot)
        except OSError as error:  # the step's own save reports it, with the flag to fix
            logger.warning("cannot write the ledger: %s", error)
            continue
        written = snapshot["totals"]


class _RecordingListener:
    """Passes progress on, and keeps the run directory's ledger and state current."""

    def __init__(
        self,
        inner: ProgressListener,
        run_dir: RunDirectory | None,
        engines: Sequence[Any],
        state: dict[str, Any],
        write_ledger: bool = True,
    ) -> None:
        self.inner = inner
        self.run_dir = run_dir
        self.engines = engines
        self.state = state
        self.write_ledger = write_ledger

    def save(self) -> None:
        if self.run_dir is None:
            return
        if self.write_ledger:
            self.run_dir.write_ledger(engines_snapshot(self.engines))
        self.state["updated"] = now_iso()
        self.run_dir.write_state(self.state)

    def task_started(self, task: str, total_steps: int) -> None:
        self.state["tasks"][task] = {"status": "running", "steps_done": 0, "steps": total_steps}
        self.save()
        self.inner.task_started(task, total_steps)

    def step_finished(self, task: str, step: int, total_steps: int, best_dev: float) -> None:
        self.state["tasks"][task].update({"steps_done": step + 1, "best_dev": best_dev})
        self.save()
        self.inner.step_finished(task, step, total_steps, best_dev)

    def task_finished(self, task: str, result: Any) -> None:
        self.state["tasks"][task].update({"status": result.status, "steps_done": result.steps_done})
        self.save()
        self.inner.task_finished(task, result)


async def run_optimization(
    spec: RunSpec,
    *,
    scorer: Any,
    optimizer: GenerationEngine,
    run_dir: RunDirectory | None,
    listener: ProgressListener | None = None,
    evaluator: ScoringEvaluator | None = None,
    resume: bool = False,
    shared_ledger: bool = False,
) -> dict[str, Any]:
    """Run every task of `spec` and return the summary (also written to `summary.json`)."""
    listener = listener or SilentProgress()
    engines = [scorer, optimizer]
    state, earlier = _open_session(run_dir, engines, resume, carry=not shared_ledger)
    recording = _RecordingListener(listener, run_dir, engines, state, not shared_ledger)
    tasks = {
        name: load_task(name, spec.data_dir, **spec.rules.task_options()) for name in spec.tasks
    }
    format_draws = (
        draw_run_format_indices(
            spec.optimizer.seed, list(tasks.values()), spec.optimizer.format_examples
        )
        if spec.optimizer.optimize
        else {}
    )
    embedder = _embedder(spec, run_dir, optimizer)
    evaluator = evaluator or Evaluator(scorer, spec.scoring)
    loop = PromptOptimizer(
        spec.optimizer,
        evaluator=evaluator,
        optimizer=optimizer,
        embedder=embedder,
        listener=recording,
        budget_engines=(scorer, optimizer),
        format_draws=format_draws,
    )
    gate = asyncio.Semaphore(spec.tasks_at_once)
    started = time.monotonic()
    writer = None
    if run_dir is not None and spec.ledger_interval_s > 0 and not shared_ledger:
        writer = asyncio.create_task(write_ledger_every(run_dir, engines, spec.ledger_interval_s))

    async def run_task(name: str) -> TaskResult:
        recorder = run_dir.task(name) if run_dir is not None else None
        if resume and recorder is not None:
            result = _finished_earlier(name, recorder, state)
            if result is not None:
                return result
        async with gate:
            return await loop.run(tasks[name], recorder)

    try:
        results = list(await asyncio.gather(*(run_task(name) for name in spec.tasks)))
    except BaseException as error:
        failed = isinstance(error, Exception)
        state["status"] = "failed" if failed else "interrupted"
        state["error"] = (
            f"{type(error).__name__}: {error}" if failed else "interrupted (Ctrl-C or SIGTERM)"
        )
        recording.save()
        raise
    finally:
        if writer is not None:
            writer.cancel()
        if embedder is not None:
            await embedder.close()
    summary = _summary(spec, results, engines, earlier, shared_ledger)
    summary["wall_time_s"] = round(time.monotonic() - started, 3)
    state["status"] = summary["status"]
    state["finished"] = now_iso()
    state.pop("error", None)
    recording.save()
    if run_dir is not None:
        run_dir.write_summary(summary)
    return summary


def _summary(
    spec: RunSpec,
    results: Sequence[TaskResult],
    engines: Sequence[Any],
    earlier: Sequence[dict[str, Any]],
    shared_ledger: bool,
) -> dict[str, Any]:
    """The summary; with a shared ledger the engines' spend is the caller's, not this run's."""
    if not shared_ledger:
        return summarise(spec, results, engines_snapshot(engines), earlier)
    summary = summarise(spec, results, engines_snapshot(()), earlier)
    summary.update(cost_usd=None, total_tokens=None, improvement_per_usd=None)
    summary.update(improvement_per_mtok=None, spend="shared")
    return summary


def _open_session(
    run_dir: RunDirectory | None, engines: Sequence[Any], resume: bool, carry: bool = True
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's state for this session, and the earlier sessions' ledgers (their spend is
    carried into the engines' budgets unless not `carry`); the state is written before any
    work."""
    earlier: list[dict[str, Any]] = []
    state: dict[str, Any] = {"status": "running", "sessions": 1, "tasks": {}}
    if run_dir is None:
        return state, earlier
    if resume:
        previous = run_dir.read_state()
        session = int(previous.get("sessions", 1))
        run_dir.archive_ledger(session)
        state["sessions"] = session + 1
        state["tasks"] = previous.get("tasks", {})
    earlier = run_dir.earlier_ledgers() if carry else []
    carry_over_spend(engines, earlier)
    state["budgets"] = session_budgets(engines)
    state["started"] = now_iso()
    run_dir.write_state(state)
    return state, earlier


def _embedder(spec: RunSpec, run_dir: RunDirectory | None, optimizer: Any) -> Embedder | None:
    """The relevance direction's embedder (None for every other direction)."""
    if not (spec.optimizer.optimize and spec.optimizer.direction == "relevance"):
        return None
    return make_embedder(
        spec.embedder,
        run_dir.embeddings_path if run_dir is not None else None,
        # Embedding calls follow the optimizer's retry policy and budget, in its ledger.
        engine_config=optimizer.config if isinstance(optimizer, Engine) else None,
        ledger=optimizer.ledger if isinstance(optimizer, Engine) else None,
        budget=optimizer.budget if isinstance(optimizer, Engine) else None,
    )


def _finished_earlier(name: str, recorder: Any, state: dict[str, Any]) -> TaskResult | None:
    """The result of a task an earlier session finished (noted in `state`), else None."""
    stored = recorder.read_result()
    if stored is None or stored.get("status") != "finished":
        return None
    logger.info("task %s finished in an earlier session; not run again", name)
    result = TaskResult.from_json(stored)
    state["tasks"][name] = {"status": "finished", "steps_done": result.steps_done}
    return result
