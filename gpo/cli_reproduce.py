"""`gpo reproduce`: the paper's table from a sweep of runs, methods x tasks x seeds.

    gpo reproduce --task lite-bbh --method gpo --method ape --seeds 3
    gpo reproduce --resume SWEEP_DIR

Each (method, task, seed) cell is an ordinary `gpo optimize` run directory inside the sweep
directory (`gpo.sweep`); every cell runs through one engine set, opened once with the same
endpoint, engine and scoring flags as `gpo optimize`, so the servers see one stream of work and
stay full across runs (`--cells-at-once` bounds how many cells run together), and every cell
shares the sweep's response cache. Seeds are 0 .. N-1 (`--seeds N`; the paper reports the mean
of 3 runs). The sweep ends with the paper's table layout (`gpo.reproduce_table`): per method and
benchmark the mean and the sample standard deviation over seeds, the paper's number
(`gpo.paper_tables`) and whether it lies within one standard deviation; printed, and written to
`reproduce.md` and `reproduce.json` in the sweep directory.

`--resume SWEEP_DIR` continues a killed, interrupted or budget-stopped sweep with its stored
flags: finished cells are read back, unfinished ones resumed from the shared cache (no answered
request is sent again), the rest started. Operational flags may change, as for `gpo optimize
--resume`, and `--cells-at-once` too. Budgets (`--budget-usd`, `--budget-tokens`) hold for the
whole sweep across its sessions. One process at a time works in a sweep directory (`run.lock`).

Exit status (README "Exit codes"): 0 every cell finished; 3 stopped by a budget (everything
saved; resume with a larger budget); 2 a usage error (or the sweep directory is in use); 130
Ctrl-C and 143 SIGTERM, both a clean stop (continue with `--resume`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from backends.errors import ConfigError
from benchmarks import DATA_DIR_ENV, load_task, resolve_data_dir, resolve_task_names
from engine.evaluator import Evaluator
from engine.event_loop import run as run_async
from gpo.batch_flags import add_batch_arguments, attach_batch_runner
from gpo.budget_guard import spent_cap
from gpo.cli_optimize import run_config
from gpo.endpoint_flags import (
    ROLES,
    BoundedNumber,
    add_endpoint_arguments,
    add_shared_arguments,
)
from gpo.endpoint_flags import spec_from_args as engine_set_from_args
from gpo.endpoints import open_engines
from gpo.ledger_view import run_totals
from gpo.local_server import settle_local_server
from gpo.methods import METHODS
from gpo.optimize_args import DATA_DIR_HELP, add_run_shape_arguments, spec_from_args
from gpo.progress_display import (
    ProgressDisplay,
    add_progress_arguments,
    display_mode,
    progress_interval,
)
from gpo.progress_tracker import ProgressEvaluator, ProgressTracker, plan_task
from gpo.reproduce_table import CellOutcome, build_table, rich_table, write_tables
from gpo.resume import (
    describe_changes,
    resume_changes,
    resumed_arguments,
    stored_arguments,
    url_identities,
)
from gpo.run_lock import RunLock
from gpo.runner import now_iso
from gpo.stop_signals import EXIT_TERMINATED, TerminationGuard
from gpo.sweep import SWEEP_FILE, Cell, SweepDirectory, SweepRun, cell_arguments, read_outcome
from gpo.user_text import check_arguments

EXIT_STOPPED = 3
MAX_SEEDS, MAX_CELLS_AT_ONCE = 1_000, 1_000


def add_parser(subparsers: Any) -> None:
    """Add `reproduce` and its flags to the `gpo` command's subparsers."""
    parser = subparsers.add_parser(
        "reproduce",
        help="the paper's table: methods x tasks x seeds through one engine set",
        description="Run every method on every task with every seed, as resumable run "
        "directories in one sweep directory, and compare the means with the paper's numbers.",
    )
    what = parser.add_argument_group("the sweep")
    what.add_argument("--task", action="append", metavar="NAME", help="task or group; repeat")
    what.add_argument(
        "--method", action="append", choices=METHODS, help="method; repeat (default: gpo)"
    )
    what.add_argument(
        "--seeds",
        type=BoundedNumber(int, 1, MAX_SEEDS),
        default=3,
        metavar="N",
        help="seeds 0..N-1 per method and task (default 3, as the paper)",
    )
    what.add_argument("--data-dir", metavar="PATH", help=DATA_DIR_HELP)
    what.add_argument("--initial-prompt", metavar="TEXT", help="default: Let's think step by step.")
    add_run_shape_arguments(parser, seed=False)
    run = parser.add_argument_group("sweep directory")
    run.add_argument(
        "--sweep-dir", type=Path, metavar="DIR", help="default: runs/TIMESTAMP-reproduce"
    )
    run.add_argument("--resume", type=Path, metavar="SWEEP_DIR", help="continue a stopped sweep")
    run.add_argument(
        "--cells-at-once",
        type=BoundedNumber(int, 1, MAX_CELLS_AT_ONCE),
        default=4,
        metavar="N",
        help="cells (runs) in parallel through the shared engines (default 4)",
    )
    add_progress_arguments(run)
    add_endpoint_arguments(parser, "scorer")
    add_endpoint_arguments(parser, "optimizer")
    add_shared_arguments(parser)
    add_batch_arguments(parser, "the cells' test evaluations")


def build_reproduce_parser() -> argparse.ArgumentParser:
    """A stand-alone `reproduce` parser: its defaults and types rebuild a resumed sweep's flags."""
    root = argparse.ArgumentParser(prog="gpo")
    root.add_argument("--log-level", default="WARNING")
    add_parser(root.add_subparsers(dest="command"))
    return root._subparsers._group_actions[0].choices["reproduce"]  # type: ignore[union-attr]


def plan_cells(args: argparse.Namespace) -> list[Cell]:
    """Every cell, method by method, task by task, seed by seed; each checked before any work."""
    if not args.task:
        raise ConfigError("--task: name at least one task or group (see `gpo eval --list-tasks`)")
    methods = list(dict.fromkeys(args.method or ["gpo"]))
    tasks = resolve_task_names(args.task, args.data_dir)
    cells = []
    for method in methods:
        for task in tasks:
            spec = spec_from_args(cell_arguments(args, method, task, 0, Path("."), None))
            for seed in range(args.seeds):
                seeded = dataclasses.replace(spec, optimizer=spec.optimizer.replace(seed=seed))
                cells.append(Cell(method, task, seed, seeded))
    return cells


def _sweep_config(args: argparse.Namespace, cells: list[Cell]) -> dict[str, Any]:
    return {
        "created": now_iso(),
        "methods": list(dict.fromkeys(cell.method for cell in cells)),
        "tasks": list(dict.fromkeys(cell.task for cell in cells)),
        "seeds": list(range(args.seeds)),
        "cells": [cell.name for cell in cells],
        "data_dir": args.data_dir,
        "arguments": stored_arguments(args),
        "sessions": [],
    }


def _prepare_new(
    args: argparse.Namespace, locks: contextlib.ExitStack
) -> tuple[argparse.Namespace, list[Cell], SweepDirectory]:
    found = resolve_data_dir(args.data_dir)
    if found.is_dir():
        args.data_dir = str(found)
    settle_local_server(args, ROLES, command="gpo reproduce")  # kept in every cell's arguments
    cells = plan_cells(args)
    path = args.sweep_dir or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-reproduce"
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"--sweep-dir {path}: exists and is not an empty directory; continue a sweep with "
            "--resume or choose another --sweep-dir"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"--sweep-dir {path}: cannot create it: {error.strerror}") from None
    sweep = SweepDirectory(Path(os.path.abspath(path)))
    locks.enter_context(RunLock(sweep.path, flag="--sweep-dir"))
    args.sweep_dir = sweep.path
    sweep.write_config(_sweep_config(args, cells))
    return args, cells, sweep


def _prepare_resume(
    args: argparse.Namespace, locks: contextlib.ExitStack
) -> tuple[argparse.Namespace, list[Cell], SweepDirectory]:
    """Reopen a sweep with its stored flags and this session's operational changes."""
    path = Path(os.path.abspath(args.resume.expanduser()))
    if not (path / SWEEP_FILE).is_file():
        raise ConfigError(f"--resume {args.resume}: not a sweep directory (no {SWEEP_FILE})")
    if args.sweep_dir is not None and Path(os.path.abspath(args.sweep_dir)) != path:
        raise ConfigError(f"--sweep-dir {args.sweep_dir}: a resumed sweep stays in {path}")
    sweep = SweepDirectory(path)
    locks.enter_context(RunLock(path, flag="--resume"))
    config = sweep.read_config()
    stored = config.get("arguments")
    if not isinstance(stored, dict):
        raise ConfigError(f"--resume {args.resume}: {SWEEP_FILE} holds no arguments")
    merged = resumed_arguments(args, stored, build_reproduce_parser())
    merged.resume = merged.sweep_dir = path
    if args.data_dir is None and os.environ.get(DATA_DIR_ENV):
        merged.data_dir = None
    merged.data_dir = str(resolve_data_dir(merged.data_dir))
    for role in ROLES:
        setattr(merged, f"{role}_url_identities", url_identities(stored, merged, role))
    settle_local_server(merged, ROLES, stored=stored, command="gpo reproduce")
    cells = plan_cells(merged)
    changes = resume_changes(stored, merged)
    if changes:
        print(f"gpo reproduce: resuming {path} with: {describe_changes(changes)}", file=sys.stderr)
    sessions = [*config.get("sessions", []), {"resumed": now_iso(), "changes": changes}]
    config.update(arguments=stored_arguments(merged), data_dir=merged.data_dir, sessions=sessions)
    sweep.write_config(config)
    return merged, cells, sweep


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    progress_interval(args)  # a bad GPO_PROGRESS_INTERVAL is refused before any work
    sweep: SweepDirectory | None = None
    with TerminationGuard() as guard:
        try:
            with contextlib.ExitStack() as locks:
                prepare = _prepare_resume if args.resume is not None else _prepare_new
                args, cells, sweep = prepare(args, locks)
                return _run_locked(args, cells, sweep, guard)
        except (KeyboardInterrupt, asyncio.CancelledError):
            if guard.received is None:
                raise
            resume = f"; continue with: gpo reproduce --resume {sweep.path}" if sweep else ""
            print(
                f"gpo reproduce: stopped by SIGTERM; finished work is saved{resume}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED


def _spent_message(args: argparse.Namespace, sweep: SweepDirectory) -> str | None:
    """Why a resumed sweep may send nothing (its budget is spent), or None."""
    files = sweep.files
    reason = spent_cap(args, run_totals(files.recorded_ledgers()), files.read_state())
    if reason is None:
        return None
    flag = reason.split(" ", 1)[0]
    return (
        f"stopped: {reason}; nothing was sent. Continue with a larger budget: "
        f"gpo reproduce --resume {sweep.path} {flag} ..."
    )


def sweep_tracker(cells: list[Cell], sweep: SweepDirectory) -> ProgressTracker:
    """A tracker with each cell's plan (by its label); cells finished earlier have none left."""
    plans = {
        cell.label: plan_task(cell.spec.optimizer, load_task(cell.task, cell.spec.data_dir))
        for cell in cells
    }
    tracker = ProgressTracker("reproduce", plans)
    for cell in cells:
        if read_outcome(cell, sweep.cell_path(cell)).status == "finished":
            tracker.tasks[cell.label].status = "finished"
            tracker.tasks[cell.label].phase = "done"
    return tracker


def _run_locked(
    args: argparse.Namespace, cells: list[Cell], sweep: SweepDirectory, guard: TerminationGuard
) -> int:
    """The sweep itself, with its directory locked and SIGTERM guarded."""
    resume = args.resume is not None
    stop = _spent_message(args, sweep) if resume else None
    if stop is not None:
        Console().print(stop, style="yellow", markup=False, soft_wrap=True)
        return EXIT_STOPPED
    console = Console(stderr=True)
    tracker = sweep_tracker(cells, sweep)
    display = ProgressDisplay(
        tracker, console, display_mode(args, console), progress_interval(args)
    )
    cache = None if args.no_cache else Path(args.cache or sweep.cache_path).absolute()

    def cell_config(cell: Cell) -> dict[str, Any]:
        where = sweep.cell_path(cell)
        arguments = cell_arguments(args, cell.method, cell.task, cell.seed, where, cache)
        return run_config(cell.spec, arguments)

    def cell_done(outcome: CellOutcome) -> None:
        score = "-" if outcome.final_test is None else f"{100 * outcome.final_test:.2f}"
        console.print(
            f"[dim]cell {outcome.method} {outcome.task} seed {outcome.seed}: {outcome.status}, "
            f"test {score}[/dim]"
        )

    async def main() -> list[CellOutcome]:
        guard.watch()
        async with open_engines(engine_set_from_args(args, ROLES, sweep.path)) as engines:
            attach_batch_runner(args, engines["scorer"], sweep.path, all_requests=False)
            tracker.engines = (engines["scorer"], engines["optimizer"])
            refresher = asyncio.create_task(display.run_forever())

            def scoring(cell: Cell) -> ProgressEvaluator:
                inner = Evaluator(engines["scorer"], cell.spec.scoring)
                return ProgressEvaluator(inner, tracker, key=cell.label)

            runner = SweepRun(
                sweep, cells, engines, cell_config, args.cells_at_once, tracker, cell_done, scoring
            )
            try:
                return await runner.run(resume)
            finally:
                refresher.cancel()

    with display:
        outcomes = run_async(main())
    seeds = list(range(args.seeds))
    methods = list(dict.fromkeys(cell.method for cell in cells))
    tasks = list(dict.fromkeys(cell.task for cell in cells))
    table = build_table(outcomes, methods, tasks, seeds)
    md_path, _ = write_tables(sweep.path, table)
    Console().print(rich_table(table))
    print(f"table: {md_path} (and reproduce.json); sweep: {sweep.path}")
    if all(outcome.status == "finished" for outcome in outcomes):
        return 0
    print(
        f"gpo reproduce: some cells stopped (budget); continue with: "
        f"gpo reproduce --resume {sweep.path}",
        file=sys.stderr,
    )
    return EXIT_STOPPED
