"""`gpo optimize`: run GPO or a baseline on a task or a group of tasks.

Its flags, and how they become a `RunSpec`, are `gpo.optimize_args`; what it shows while it runs
and at the end is `gpo.optimize_display`. This module prepares the run directory (created or
reopened, locked, its config written) and delegates to `gpo.runner`. A method is a preset; each
knob flag overrides it, so the paper's ablations are one command each, e.g.

    gpo optimize --task lite-bbh --method gpo --direction recency        # Table 2
    gpo optimize --task lite-bbh --method gpo --schedule linear          # Table 3
    gpo optimize --task lite-bbh --method gpo --update edit --warmup-steps 1

`--resume RUN_DIR` continues a killed or budget-stopped run with its stored configuration, from
any working directory (paths in config.json are absolute, and the data directory is the one the
run recorded unless --data-dir or GPO_DATA_DIR names another). Operational flags may change:
where and how requests are sent (--ROLE-url, timeouts, concurrency, retries, rate limits, the
cache), budgets and display; each change is noted on stderr and recorded in config.json's
`sessions`. A flag that changes what the run computes (task, method, model, chat template,
sizes, knobs, scoring) may not. Budgets hold for the whole run: what earlier sessions spent
counts against them. One process at a time works in a run directory (`gpo.run_lock`).

Exit status: 0 finished; 3 stopped by a budget (everything saved; resume with a larger budget);
2 a usage error (or the run directory is in use); 130 Ctrl-C and 143 SIGTERM, both a clean stop
(finished work and the spend saved, state "interrupted"; continue with `--resume`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import load_task, resolve_data_dir
from engine.evaluator import Evaluator
from engine.event_loop import run as run_async
from gpo.batch_flags import attach_batch_runner
from gpo.budget_guard import resume_stop_message
from gpo.endpoint_flags import ROLES
from gpo.endpoint_flags import spec_from_args as engine_set_from_args
from gpo.endpoints import open_engines
from gpo.json_output import interrupted_json, optimize_json, write_json
from gpo.local_server import settle_local_server
from gpo.optimize_args import add_parser as add_parser  # the `gpo` command adds it from here
from gpo.optimize_args import build_optimize_parser, spec_from_args
from gpo.optimize_display import print_summary
from gpo.progress_display import ProgressDisplay, display_mode, progress_interval
from gpo.progress_tracker import ProgressEvaluator, ProgressTracker, plan_task
from gpo.resume import reopen_run, stored_arguments
from gpo.resume import resumed_arguments as resumed_arguments  # re-exported
from gpo.run_dir import RunDirectory
from gpo.run_lock import RunLock
from gpo.runner import RunSpec, now_iso, run_optimization
from gpo.stop_signals import EXIT_TERMINATED, TerminationGuard
from gpo.user_text import check_arguments

EXIT_STOPPED = 3
EXIT_INTERRUPTED = 130


def default_run_dir(spec: RunSpec) -> Path:
    label = spec.tasks[0].replace("/", "-") if len(spec.tasks) == 1 else f"{len(spec.tasks)}tasks"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{spec.optimizer.method}-{label}"


def run_config(spec: RunSpec, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "created": now_iso(),
        "tasks": list(spec.tasks),
        "optimizer": spec.optimizer.to_json(),
        "embedder": {
            "kind": spec.embedder.kind,
            "model": spec.embedder.model,
            "base_url": spec.embedder.base_url,
            "api_key_env": spec.embedder.api_key_env,
            "device": spec.embedder.device,
            "description": spec.embedder.describe(),
        },
        "scoring": {
            "position": spec.scoring.layout.position,
            "qa_markers": spec.scoring.layout.qa_markers,
            "chat": spec.scoring.layout.chat,
            "shots": spec.scoring.layout.shots,
            "max_tokens": spec.scoring.first_turn.max_tokens,
            "follow_up_max_tokens": spec.scoring.follow_up.max_tokens,
            **spec.rules.to_json(),
        },
        "data_dir": args.data_dir,
        "arguments": stored_arguments(args),
        "sessions": [],
    }


# -- progress ----------------------------------------------------------------------------------


def progress_tracker(spec: RunSpec, run_dir: RunDirectory, resume: bool) -> ProgressTracker:
    """A tracker planned from the spec; tasks an earlier session finished have nothing left."""
    plans = {name: plan_task(spec.optimizer, load_task(name, spec.data_dir)) for name in spec.tasks}
    tracker = ProgressTracker("optimize", plans)
    if resume:
        stored = run_dir.read_state().get("tasks", {})
        for name, state in tracker.tasks.items():
            if isinstance(stored.get(name), dict) and stored[name].get("status") == "finished":
                state.status, state.phase = "finished", "done"
    return tracker


# -- the command -------------------------------------------------------------------------------


def prepare(
    args: argparse.Namespace, locks: contextlib.ExitStack
) -> tuple[argparse.Namespace, RunSpec, RunDirectory]:
    """Check everything and create (or reopen) the run directory, before any paid work. The
    directory's lock is taken (into `locks`) before anything in it is written, so a second
    process changes nothing of a run that another one is working on."""
    if args.resume is not None:
        return _prepare_resume(args, locks)
    found = resolve_data_dir(args.data_dir)
    if found.is_dir():  # recorded, so that a resume from elsewhere reads the same data
        args.data_dir = str(found)
    spec = spec_from_args(args)
    settle_local_server(args, ROLES, command="gpo optimize")  # kept in config.json's arguments
    run_dir = RunDirectory.create(args.run_dir or default_run_dir(spec))
    locks.enter_context(RunLock(run_dir.path, flag="--run-dir"))
    args.run_dir = Path(os.path.abspath(run_dir.path))
    run_dir.write_config(run_config(spec, args))
    return args, spec, run_dir


def _prepare_resume(
    args: argparse.Namespace, locks: contextlib.ExitStack
) -> tuple[argparse.Namespace, RunSpec, RunDirectory]:
    """Reopen a run with its stored arguments and this session's operational changes; the
    changes are recorded once the run checks out and its lock is held."""
    reopened = reopen_run(args, build_optimize_parser())
    spec = spec_from_args(reopened.arguments)
    settle_local_server(reopened.arguments, ROLES, stored=reopened.stored, command="gpo optimize")
    locks.enter_context(RunLock(reopened.run_dir.path, flag="--resume"))
    reopened.record_session()
    return reopened.arguments, spec, reopened.run_dir


def run(args: argparse.Namespace) -> int:
    check_arguments(args)  # text that is not UTF-8 would fail later, in a traceback
    if getattr(args, "dry_run", False):
        from gpo.dry_run import estimate_run, print_estimates

        estimates = estimate_run(spec_from_args(args), args)
        settle_local_server(args, ROLES, command="gpo optimize")  # says which, starts nothing
        if getattr(args, "json", False):
            tasks = {task: estimate.to_json() for task, estimate in estimates.items()}
            write_json(
                {"command": "optimize", "status": "dry_run", "exit_code": 0, "estimates": tasks}
            )
        else:
            print_estimates(estimates)
        return 0
    progress_interval(args)  # a bad GPO_PROGRESS_INTERVAL is refused before any work
    run_dir: RunDirectory | None = None
    with TerminationGuard() as guard:
        try:
            with contextlib.ExitStack() as locks:
                args, spec, run_dir = prepare(args, locks)
                return _run_locked(args, spec, run_dir, guard)
        except (KeyboardInterrupt, asyncio.CancelledError):
            where = run_dir.path if run_dir else None
            if getattr(args, "json", False):
                code = EXIT_TERMINATED if guard.received is not None else EXIT_INTERRUPTED
                write_json(interrupted_json("optimize", where, code))
            if guard.received is None:
                raise
            resume = f"; continue with: gpo optimize --resume {where}" if where else ""
            print(
                f"gpo optimize: stopped by SIGTERM; finished work is saved{resume}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED


def _run_locked(
    args: argparse.Namespace, spec: RunSpec, run_dir: RunDirectory, guard: TerminationGuard
) -> int:
    """The run itself, with the run directory locked and SIGTERM guarded."""
    as_json = bool(getattr(args, "json", False))
    stop = resume_stop_message(args, run_dir) if args.resume is not None else None
    if stop is not None:  # the budget is spent by earlier sessions: nothing to run
        Console(stderr=as_json).print(stop, style="yellow", markup=False, soft_wrap=True)
        if as_json:
            summary = run_dir.read_summary() or {"status": "stopped"}
            write_json(optimize_json(summary, run_dir.path, EXIT_STOPPED))
        return EXIT_STOPPED
    console = Console(stderr=True)
    tracker = progress_tracker(spec, run_dir, args.resume is not None)
    display = ProgressDisplay(
        tracker, console, display_mode(args, console), progress_interval(args)
    )
    if spec.embedder.kind == "hashing" and spec.optimizer.direction == "relevance":
        console.print(
            "[dim]relevance retrieval uses the hashing embedder (no embedding model "
            "configured; see --embedder)[/dim]"
        )

    async def main() -> dict[str, Any]:
        guard.watch()  # SIGTERM cancels this task: a clean stop, as Ctrl-C
        async with open_engines(engine_set_from_args(args, ROLES, run_dir.path)) as engines:
            attach_batch_runner(args, engines["scorer"], run_dir.path, all_requests=False)
            tracker.engines = (engines["scorer"], engines["optimizer"])
            scoring = ProgressEvaluator(Evaluator(engines["scorer"], spec.scoring), tracker)
            refresher = asyncio.create_task(display.run_forever())
            try:
                return await run_optimization(
                    spec,
                    scorer=engines["scorer"],
                    optimizer=engines["optimizer"],
                    run_dir=run_dir,
                    listener=tracker,
                    evaluator=scoring,
                    resume=args.resume is not None,
                )
            finally:
                refresher.cancel()

    with display:
        summary = run_async(main())
    code = 0 if summary["status"] == "finished" else EXIT_STOPPED
    print_summary(summary, run_dir.path, Console(stderr=True) if as_json else None)
    if as_json:
        write_json(optimize_json(summary, run_dir.path, code, run_dir.earlier_ledgers()))
    return code
