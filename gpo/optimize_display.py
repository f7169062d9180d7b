"""What `gpo optimize` shows when it ends: the summary table.

The table (on stdout, or stderr under `--json`) puts each task's initial and final prompts side
by side with their dev and test scores, then the tokens, the cost and the test improvement per
dollar. Progress while it runs is `gpo.progress_display`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gpo.ledger_view import of_which as _of_which


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _short(text: str, width: int = 48) -> str:
    text = text.replace("\n", " ")
    if not text:
        return "(empty)"
    return text if len(text) <= width else text[: width - 3] + "..."


def print_summary(
    summary: Mapping[str, Any], run_path: Path, console: Console | None = None
) -> None:
    """The final table on stdout (or `console`): prompts, scores, cost, improvement per dollar."""
    console = console or Console()
    if not console.is_terminal:  # a log file has room for the prompts
        console = Console(width=max(console.width, 140), stderr=console.stderr)
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
        f"(prompt {totals.get('prompt_tokens', 0):,}{_of_which(totals)}, completion "
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
    racing = racing_line(summary["tasks"])
    if racing:
        console.print(racing)
    unpriced = totals.get("unpriced_models") or []
    if unpriced:
        console.print(f"[dim]no price for {', '.join(unpriced)} (--prices, --ROLE-gpu-hour-usd)")
    if summary["status"] != "finished":
        console.print(
            f"[yellow]stopped: {', '.join(summary['stopped_tasks'])} ran out of budget; "
            f"continue with: gpo optimize --resume {run_path} --budget-usd ...[/yellow]"
        )
    console.print(f"run directory: {run_path}")


def racing_line(tasks: Sequence[Mapping[str, Any]]) -> str | None:
    """One line on what `--racing` saved, or None when it was off."""
    steps = [step for task in tasks for step in task.get("racing", ())]
    if not steps:
        return None
    scored = sum(int(step["chains_scored"]) for step in steps)
    full = sum(int(step["chains_full"]) for step in steps)
    saved = full - scored
    per_step = ", ".join(f"{int(s['chains_full']) - int(s['chains_scored'])}" for s in steps)
    return (
        f"racing (delta {steps[0]['delta']:g}, epsilon {steps[0]['epsilon']:.3g}): "
        f"{scored:,} of {full:,} candidate chains scored, {saved:,} saved "
        f"({saved / full:.0%}); saved per step: {per_step}"
    )
