"""`gpo runs [FOLDER]`: the runs under a folder (default `runs/`), one row each, by start time.

Each row: name, status (finished / budget-stopped / failed / interrupted / running, or foreign
/ unreadable for a directory that is not a readable run), method, tasks, the final dev and test
scores (mean over tasks, in %), the cost (calls, tokens, dollars), the start time and the wall
time. `--json` prints the same as one JSON object. Reading never changes a run directory (see
`gpo.run_listing`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from gpo.run_listing import RunCost, RunRow, list_runs

DEFAULT_FOLDER = Path("runs")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the runs under a folder",
        description="List every run directory (gpo optimize, gpo eval, gpo reproduce) under a "
        "folder with its status, method, tasks, final scores, cost and start time.",
    )
    parser.add_argument(
        "folder",
        nargs="?",
        type=Path,
        default=DEFAULT_FOLDER,
        metavar="FOLDER",
        help=f"where the runs are (default {DEFAULT_FOLDER}/)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    # No runs/ yet is an empty list; a folder the user names must exist.
    missing_default = args.folder == DEFAULT_FOLDER and not DEFAULT_FOLDER.exists()
    rows = [] if missing_default else list_runs(args.folder)
    if args.json:
        payload = {"folder": str(args.folder), "runs": [row.to_json() for row in rows]}
        sys.stdout.write(orjson.dumps(payload, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    if not rows:
        where = f" under {args.folder}"
        if missing_default:
            where = f": {args.folder}/ does not exist here"
        print(f"no runs{where} (gpo optimize and gpo eval write under runs/ by default)")
        return 0
    print_rows(rows, args.folder)
    return 0


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def format_dollars(cost: RunCost) -> str:
    """ "$0.0123", "unpriced" (no model had a price) or "$0.0123 + unpriced"."""
    if cost.cost_usd is None:
        return "-"
    if cost.unpriced_models and cost.cost_usd == 0:
        return "unpriced"
    text = f"${cost.cost_usd:.4f}"
    return f"{text} + unpriced" if cost.unpriced_models else text


def format_count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{rest:02d}s"


def _tasks(row: RunRow) -> str:
    if len(row.tasks) <= 3:
        return ", ".join(row.tasks) or "-"
    return f"{', '.join(row.tasks[:2])} +{len(row.tasks) - 2} more"


def print_rows(rows: list[RunRow], folder: Path) -> None:
    table = Table(title=f"Runs under {folder} (scores in %, mean over tasks)")
    for column in ("run", "status", "method", "tasks", "dev", "test", "calls", "tokens"):
        table.add_column(column, overflow="fold")
    for column in ("dollars", "started (UTC)", "wall"):
        table.add_column(column)
    notes = []
    for row in rows:
        name = str(row.path.relative_to(folder)) if row.path.is_relative_to(folder) else row.name
        table.add_row(
            name or str(row.path),
            row.status,
            row.method or "-",
            _tasks(row),
            percent(row.dev),
            percent(row.test),
            format_count(row.cost.calls),
            format_count(row.cost.tokens),
            format_dollars(row.cost),
            (row.started or "-").replace("T", " ").removesuffix("+00:00"),
            format_wall(row.wall_time_s),
        )
        if row.note and (row.kind in ("unreadable", "foreign") or row.status == "failed"):
            notes.append(f"{name}: {row.note}")
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note, markup=False, highlight=False)
