"""A sweep: methods x tasks x seeds, one ordinary run directory per cell, all run through one
shared engine set, so the servers stay full from the first cell to the last.

Layout of a sweep directory:

    sweep.json               what the sweep runs (methods, tasks, seeds, the flags; no secrets)
                             and, per resumed session, what changed
    state.json               status (running / finished / stopped / interrupted / failed),
                             sessions, per-cell status
    ledger.json              the shared engines' ledger: the sweep's spend, rewritten every
                             second and after each cell; ledger.session-N.json earlier sessions'
    cache.sqlite             the response cache every cell shares
    run.lock                 held by the process working on the sweep (gpo/run_lock.py)
    cells/METHOD__TASK__seedN/   a `gpo optimize` run directory per cell (its own lock)
    reproduce.md, reproduce.json  the table (gpo/reproduce_table.py)

Cells run at most `cells_at_once` at a time through the engines. A cell whose `summary.json`
says "finished" is read back, not run; any other cell that has a run directory is resumed with
`run_optimization(resume=True)`, its answered requests replayed from the shared cache for free.
The engines' ledger is the sweep's (`shared_ledger`): a cell's summary keeps its scores and
leaves the spend to the sweep, whose earlier sessions' spend counts against the budgets.
A cell's config.json holds `gpo optimize` arguments with the shared cache, so
`gpo optimize --resume CELL_DIR` also works on a cell by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpo.budget_guard import session_budgets
from gpo.interfaces import ProgressListener, SilentProgress
from gpo.ledger_view import engines_snapshot
from gpo.reproduce_table import CellOutcome
from gpo.run_dir import (
    CONFIG_FILE,
    RunDirectory,
    atomic_write_json,
    read_json,
    scrub_secrets,
    task_folder_name,
)
from gpo.run_lock import RunLock
from gpo.runner import RunSpec, carry_over_spend, now_iso, run_optimization, write_ledger_every

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
CELLS_DIR = "cells"
SWEEP_ONLY_ARGUMENTS = ("seeds", "cells_at_once", "sweep_dir", "command")


@dataclass(frozen=True, slots=True)
class Cell:
    """One run of the sweep: a method on a task with a seed, and what it runs (`spec`)."""

    method: str
    task: str
    seed: int
    spec: RunSpec

    @property
    def name(self) -> str:
        return f"{self.method}__{task_folder_name(self.task)}__seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.method} {self.task} seed {self.seed}"


def cell_arguments(
    args: argparse.Namespace, method: str, task: str, seed: int, cell_dir: Path, cache: Path | None
) -> argparse.Namespace:
    """The `gpo optimize` arguments of one cell: the sweep's flags for one method, task and seed,
    in its run directory, with the sweep's shared cache."""
    values = {k: v for k, v in vars(args).items() if k not in SWEEP_ONLY_ARGUMENTS}
    values.update(method=method, task=[task], seed=seed, run_dir=cell_dir, resume=None)
    values.update(tasks_at_once=1, dry_run=False, no_progress=True, cache=cache)
    return argparse.Namespace(**values)


class SweepDirectory:
    """The sweep's own files; its ledger and state are kept as a run directory keeps them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = RunDirectory(path)

    @property
    def cache_path(self) -> Path:
        return self.path / "cache.sqlite"

    def cell_path(self, cell: Cell) -> Path:
        return self.path / CELLS_DIR / cell.name

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_json(self.path / SWEEP_FILE, scrub_secrets(config))

    def read_config(self) -> dict[str, Any]:
        return read_json(self.path / SWEEP_FILE)


def read_outcome(cell: Cell, path: Path) -> CellOutcome:
    """The cell as its run directory has it now (status "not started" without one)."""
    summary = RunDirectory(path).read_summary() if (path / CONFIG_FILE).exists() else None
    if summary is None:
        state = RunDirectory(path).read_state() if path.is_dir() else {}
        status = str(state.get("status", "not started"))
        return CellOutcome(cell.method, cell.task, cell.seed, str(path), status, None)
    (task,) = summary["tasks"]
    return CellOutcome(
        cell.method, cell.task, cell.seed, str(path), str(summary["status"]), task.get("final_test")
    )


class _CellProgress:
    """Passes a cell's progress on under the cell's label (the task alone is not unique)."""

    def __init__(self, inner: ProgressListener, label: str) -> None:
        self.inner, self.label = inner, label

    def task_started(self, task: str, total_steps: int) -> None:
        self.inner.task_started(self.label, total_steps)

    def step_finished(self, task: str, step: int, total_steps: int, best_dev: float) -> None:
        self.inner.step_finished(self.label, step, total_steps, best_dev)

    def task_finished(self, task: str, result: Any) -> None:
        self.inner.task_finished(self.label, result)


@dataclass
class SweepRun:
    """Runs the cells of a sweep through open engines, keeping the sweep's files current."""

    sweep: SweepDirectory
    cells: Sequence[Cell]
    engines: dict[str, Any]
    cell_config: Callable[[Cell], dict[str, Any]]
    cells_at_once: int = 4
    listener: ProgressListener | None = None
    on_cell_done: Callable[[CellOutcome], None] | None = None
    # The scoring evaluator of a cell (e.g. one that reports progress); None: the default one.
    evaluator_for: Callable[[Cell], Any] | None = None

    async def run(self, resume: bool) -> list[CellOutcome]:
        """Every cell's outcome, in the order of `cells`; state and ledger written as it goes."""
        engines = list(self.engines.values())
        state = self._open_session(resume, engines)
        gate = asyncio.Semaphore(self.cells_at_once)
        writer = asyncio.create_task(write_ledger_every(self.sweep.files, engines, 1.0))

        async def one(cell: Cell) -> CellOutcome:
            outcome = await self._run_cell(cell, gate)
            state["cells"][cell.name] = outcome.status
            self._save(state, engines)
            if self.on_cell_done is not None:
                self.on_cell_done(outcome)
            return outcome

        tasks = [asyncio.create_task(one(cell)) for cell in self.cells]
        try:
            outcomes = list(await asyncio.gather(*tasks))
        except BaseException as error:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            failed = isinstance(error, Exception)
            state["status"] = "failed" if failed else "interrupted"
            state["error"] = f"{type(error).__name__}: {error}" if failed else "interrupted"
            self._save(state, engines)
            raise
        finally:
            writer.cancel()
        stopped = any(outcome.status != "finished" for outcome in outcomes)
        state["status"] = "stopped" if stopped else "finished"
        state["finished"] = now_iso()
        state.pop("error", None)
        self._save(state, engines)
        return outcomes

    def _open_session(self, resume: bool, engines: Sequence[Any]) -> dict[str, Any]:
        """The sweep's state for this session; earlier sessions' spend counts against the
        budgets once (each cell's spend is the sweep's, not the cell's)."""
        state: dict[str, Any] = {"status": "running", "sessions": 1, "cells": {}}
        files = self.sweep.files
        if resume:
            previous = files.read_state()
            session = int(previous.get("sessions", 1))
            files.archive_ledger(session)
            state.update(sessions=session + 1, cells=dict(previous.get("cells", {})))
        carry_over_spend(engines, files.earlier_ledgers())
        state["budgets"] = session_budgets(engines)  # a resume under the same caps sends nothing
        state["started"] = now_iso()
        files.write_state(state)
        return state

    def _save(self, state: dict[str, Any], engines: Sequence[Any]) -> None:
        state["updated"] = now_iso()
        self.sweep.files.write_ledger(engines_snapshot(engines))
        self.sweep.files.write_state(state)

    async def _run_cell(self, cell: Cell, gate: asyncio.Semaphore) -> CellOutcome:
        """One cell: read back if finished, else run (or resume) it in its run directory."""
        path = self.sweep.cell_path(cell)
        outcome = read_outcome(cell, path)
        if outcome.status == "finished":
            logger.info("cell %s finished in an earlier session; not run again", cell.name)
            return outcome
        async with gate:
            path.mkdir(parents=True, exist_ok=True)
            with RunLock(path, flag=f"cell {cell.name}"):
                run_dir = RunDirectory(path)
                resume = (path / CONFIG_FILE).exists()
                if not resume:
                    run_dir.write_config(self.cell_config(cell))
                listener = _CellProgress(self.listener or SilentProgress(), cell.label)
                await run_optimization(
                    cell.spec,
                    scorer=self.engines["scorer"],
                    optimizer=self.engines["optimizer"],
                    run_dir=run_dir,
                    listener=listener,
                    evaluator=self.evaluator_for(cell) if self.evaluator_for else None,
                    resume=resume,
                    shared_ledger=True,
                )
        return read_outcome(cell, path)
