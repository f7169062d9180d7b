"""What `gpo optimize` shows: step bars while it runs, and the summary table when it ends.

The bars (on stderr, one per task) carry the best dev score so far and the run's tokens,
dollars and requests per second; the table (on stdout) puts each task's initial and final
prompts side by side with their dev and test scores, then the tokens, the cost and the test
improvement per dollar.
"""

from __future__ import annotations

import asyncio
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

from gpo.ledger_view import engines_snapshot


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


async def refresh_forever(progress: RichProgress, interval_s: float = 1.0) -> None:
    """Refresh the usage column every `interval_s` until cancelled."""
    while True:
        progress.refresh_usage()
        await asyncio.sleep(interval_s)


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
