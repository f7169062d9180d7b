"""`gpo eval`: score prompts on tasks and splits against any configured scorer endpoint.

Exit status: 0 when every sample was scored, 3 when a budget stopped the evaluation, 4 when
samples failed (some or all; the summary says how many and why, and `summary.json`'s `status`
tells "some_failed" from "all_failed"), 2 for bad input (see `gpo.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from backends.errors import ConfigError, DataError
from benchmarks import (
    list_task_names,
    load_reference_prompts,
    load_task,
    resolve_task_names,
)
from engine.event_loop import run as run_async
from gpo.batch_flags import add_batch_arguments, attach_batch_runner
from gpo.endpoint_flags import (
    BoundedNumber,
    add_endpoint_arguments,
    add_shared_arguments,
    spec_from_args,
)
from gpo.endpoints import open_engines
from gpo.eval_job import EvalJob, check_out_dir, ensure_writable_dir, fresh_dir, run_eval_job
from gpo.json_output import eval_json, interrupted_json, write_json
from gpo.ledger_view import of_which
from gpo.local_server import settle_local_server
from gpo.optimize_args import DATA_DIR_HELP
from gpo.progress_display import (
    ProgressDisplay,
    add_progress_arguments,
    display_mode,
    progress_interval,
)
from gpo.progress_tracker import ProgressTracker, WorkPlan
from gpo.run_servers import resume_hint
from gpo.scoring_flags import add_scoring_arguments, scoring_settings
from gpo.scoring_rules import ScoringRules
from gpo.stop_signals import EXIT_TERMINATED, TerminationGuard
from gpo.user_text import check_arguments, read_text_file

DEFAULT_PROMPT = "Let's think step by step."
EXIT_STOPPED = 3
EXIT_SAMPLES_FAILED = 4
EXIT_INTERRUPTED = 130
_SCORING = "scoring"  # the progress tracker's one entry: every chain of the evaluation


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score prompts on tasks",
        description="Score one or more prompts on benchmark tasks. Without an endpoint, the "
        "embedded local model is started and used.",
    )
    parser.add_argument(
        "--task",
        action="append",
        metavar="NAME",
        help="task or group (bbh/navigate, bbh, mmlu, lite-bbh, gsm8k...); repeat",
    )
    parser.add_argument("--list-tasks", action="store_true", help="print every task name and exit")
    parser.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help=f"a prompt; repeat (default, when no prompt is given: {DEFAULT_PROMPT!r})",
    )
    parser.add_argument(
        "--prompts-file",
        type=Path,
        metavar="PATH",
        help='prompts: a .jsonl of {"prompt"} (with optional "dataset"/'
        '"task" to bind a prompt to a task) or a text file, one per line',
    )
    parser.add_argument(
        "--reference-prompts",
        action="store_true",
        help="score each task with the reference run's final prompt",
    )
    parser.add_argument(
        "--split",
        action="append",
        choices=["train", "eval", "test"],
        help="split(s) to score (default test)",
    )
    parser.add_argument(
        "--limit",
        type=BoundedNumber(int, 1, 10_000_000),
        metavar="N",
        help="first N samples of each split (default: all)",
    )
    parser.add_argument("--data-dir", metavar="PATH", help=DATA_DIR_HELP)
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default: a new runs/eval-TIMESTAMP); refused if it holds an "
        "earlier evaluation (unless --overwrite) or an optimize run directory",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the records.jsonl and summary.json of an earlier evaluation in --out "
        "(its cache.sqlite is kept and reused); an optimize run directory is never overwritten",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--json",
        action="store_true",
        help="print the final summary as one JSON object on stdout (fields: "
        "docs/json-output.md); the table goes to stderr",
    )
    output.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expected calls, tokens and dollars (cached prompt tokens counted) and "
        "exit without sending a request",
    )
    add_progress_arguments(output)
    add_scoring_arguments(parser)
    add_endpoint_arguments(parser, "scorer")
    add_shared_arguments(parser)
    add_batch_arguments(parser)


def _prompts_from_file(path: Path, tasks: list[str]) -> dict[str, list[str]]:
    lines = read_text_file(path, "--prompts-file").splitlines()
    by_task: dict[str, list[str]] = {task: [] for task in tasks}
    shared: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            shared.append(line.strip())
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise DataError(f"malformed JSON: {error}", path=str(path), line=number) from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise DataError(
                "expected an object with a string 'prompt'", path=str(path), line=number
            )
        dataset, task = record.get("dataset"), record.get("task")
        if dataset:
            name = f"{dataset}/{task}" if task else dataset
            if name in by_task:
                by_task[name].append(record["prompt"])
        else:
            shared.append(record["prompt"])
    for name in by_task:
        by_task[name] = shared + by_task[name]
    return by_task


def build_job(args: argparse.Namespace) -> EvalJob:
    if not args.task:
        raise ConfigError("--task: name at least one task or group (see --list-tasks)")
    for flag, value in (("--limit", args.limit), ("--max-tokens", args.max_tokens)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be a positive integer, got {value}")
    tasks = resolve_task_names(args.task, args.data_dir)
    prompts: dict[str, list[str]] = {task: list(args.prompt or []) for task in tasks}
    if args.prompts_file is not None:
        for task, extra in _prompts_from_file(args.prompts_file, tasks).items():
            prompts[task].extend(extra)
    if args.reference_prompts:
        reference = load_reference_prompts(args.data_dir)
        for task in tasks:
            if task in reference:
                prompts[task].append(reference[task])
    for task in tasks:
        if not prompts[task]:
            prompts[task] = [DEFAULT_PROMPT]
    settings = scoring_settings(args)
    return EvalJob(
        prompts,
        tuple(args.split or ["test"]),
        args.limit,
        args.data_dir,
        settings,
        rules=ScoringRules.from_args(args),
    )


def count_items(job: EvalJob) -> int:
    """(prompt, sample) chains the job scores."""
    total = 0
    for task, prompts in job.prompts_by_task.items():
        loaded = load_task(task, job.data_dir)
        for split in job.splits:
            count = len(loaded.split(split))
            total += len(prompts) * (min(count, job.limit) if job.limit else count)
    return total


def run(args: argparse.Namespace) -> int:
    check_arguments(args)  # text that is not UTF-8 would fail later, in a traceback
    if args.list_tasks:
        sys.stdout.write("\n".join(list_task_names(args.data_dir)) + "\n")
        return 0
    interval = progress_interval(args)
    job = build_job(args)
    settle_local_server(args, ["scorer"], command="gpo eval")
    if args.dry_run:
        return _dry_run(job, args)
    if args.out is not None:
        check_out_dir(args.out, overwrite=args.overwrite)
    out_dir = ensure_writable_dir(
        args.out or fresh_dir(Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S")), "--out"
    )
    total = count_items(job)
    tracker = ProgressTracker("eval", {_SCORING: WorkPlan(total, 0, 0, 0)})
    console = Console(stderr=True)
    display = ProgressDisplay(tracker, console, display_mode(args, console), interval)

    with TerminationGuard() as guard:

        async def main() -> dict[str, Any]:
            guard.watch()  # SIGTERM cancels this task: a clean stop, as Ctrl-C
            async with open_engines(spec_from_args(args, ["scorer"], out_dir)) as engines:
                attach_batch_runner(args, engines["scorer"], out_dir)
                tracker.engines = (engines["scorer"],)
                tracker.evaluation_started(_SCORING, "", total)
                refresher = asyncio.create_task(display.run_forever())
                try:
                    return await run_eval_job(
                        job,
                        engines["scorer"],
                        out_dir,
                        on_record=lambda _: tracker.item_scored(_SCORING),
                    )
                finally:
                    refresher.cancel()

        try:
            with display:
                summary = run_async(main())
        except (KeyboardInterrupt, asyncio.CancelledError):
            if args.json:
                code = EXIT_TERMINATED if guard.received is not None else EXIT_INTERRUPTED
                write_json(interrupted_json("eval", out_dir, code))
            if guard.received is None:
                raise
            print(
                f"gpo eval: stopped by SIGTERM; the answers so far are saved{resume_hint(out_dir)}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED
    return _finish(args, summary, out_dir)


def _dry_run(job: EvalJob, args: argparse.Namespace) -> int:
    from gpo.dry_run import estimate_eval, print_estimates

    estimates = estimate_eval(job, args)
    if args.json:
        tasks = {task: estimate.to_json() for task, estimate in estimates.items()}
        write_json({"command": "eval", "status": "dry_run", "exit_code": 0, "estimates": tasks})
    else:
        print_estimates(estimates)
    return 0


def _finish(args: argparse.Namespace, summary: dict[str, Any], out_dir: Path) -> int:
    """Print the summary (on stderr under --json, which prints its object) and the exit code."""
    code = 0
    if summary.get("stopped_by_budget"):
        code = EXIT_STOPPED
    elif summary["failures"]:
        code = EXIT_SAMPLES_FAILED
    print_summary(summary, out_dir, Console(stderr=True) if args.json else None)
    if code == EXIT_SAMPLES_FAILED:
        print(f"gpo eval: {failure_line(summary)}", file=sys.stderr)
    if args.json:
        write_json(eval_json(summary, out_dir, code))
    return code


def failure_line(summary: dict[str, Any]) -> str:
    """One line: how many samples failed, of what kinds, and what the scores then mean."""
    failed, samples = summary["failures"], summary["samples"]
    kinds = summary["ledger"]["totals"]["failures_by_kind"]
    why = ", ".join(f"{kind} {count}" for kind, count in sorted(kinds.items())) or "see records"
    if failed >= samples:
        return (
            f"all {samples} samples failed ({why}); no sample was scored, so there is no score; "
            "reasons in records.jsonl"
        )
    unscored = sum(1 for row in summary["rows"] if row["answered"] == 0)
    return (
        f"{failed} of {samples} samples failed ({why}); each score is a mean over its scored "
        "samples only"
        + (f", and {unscored} row(s) had none scored (no score)" if unscored else "")
        + "; reasons in records.jsonl"
    )


def print_summary(summary: dict[str, Any], out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Scores (mean over scored samples)")
    for column in ("task", "split", "prompt", "score", "failed"):
        table.add_column(column, overflow="fold")
    for row in summary["rows"]:
        prompt = row["prompt"] if len(row["prompt"]) <= 60 else row["prompt"][:57] + "..."
        table.add_row(
            row["task"],
            row["split"],
            prompt or "(empty)",
            f"{100 * row['score']:.2f}" if row["answered"] else "-",
            str(row["failed"]),
        )
    console.print(table)
    for split, groups in summary["groups"].items():
        if len(groups) > 1 or any(":" in g or g in ("bbh", "mmlu") for g in groups):
            line = ", ".join(f"{g} {100 * s:.2f}" for g, s in groups.items())
            console.print(f"[bold]{split} group averages:[/bold] {line}")
    totals = summary["ledger"]["totals"]
    console.print(
        f"requests {totals['requests']} (cache hits {totals['cache_hits']}), "
        f"tokens {totals['prompt_tokens']} prompt{of_which(totals)} + "
        f"{totals['completion_tokens']} completion, "
        f"${totals['cost_usd']:.4f}, failures {summary['failures']}"
        + (f" {totals['failures_by_kind']}" if totals["failures_by_kind"] else "")
        + ", "
        f"wall {summary['ledger']['wall_time_s']:.1f} s"
    )
    if summary.get("stopped_by_budget"):
        console.print(f"[yellow]stopped: {summary['stopped_by_budget']}[/yellow]")
    console.print(f"records and summary in {out_dir}")
