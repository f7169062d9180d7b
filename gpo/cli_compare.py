"""`gpo compare RUN RUN [RUN...]`: per task, the runs' scores side by side and each run's
difference from the first (the baseline) with a paired 95% bootstrap interval, and the cost.

A difference whose interval excludes 0 is marked with `*`: on the samples both runs scored, the
gap is larger than resampling those samples would produce by chance. An interval that contains
0 means these samples cannot tell the two prompts apart. The statistics are in
`gpo.paired_bootstrap`, the data in `gpo.run_comparison`; `--json` prints the `Comparison`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from gpo.cli_runs import format_count, format_dollars, percent
from gpo.endpoint_flags import BoundedNumber
from gpo.paired_bootstrap import (
    DEFAULT_CONFIDENCE,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    PairedDifference,
)
from gpo.run_comparison import SPLITS, Comparison, TaskComparison, compare_runs


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare runs with paired confidence intervals",
        description="Compare runs task by task: the final prompt's score of each optimize run "
        "(the score of each prompt of an eval), and each run minus the first (the baseline) with "
        "a paired bootstrap confidence interval over the samples both scored (matched by "
        "sample id). A * marks a difference whose interval excludes 0.",
    )
    parser.add_argument(
        "runs",
        nargs="+",
        type=Path,
        metavar="RUN",
        help="run directories; the first is the baseline",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default="test",
        help="the split compared (default test; eval is the dev split)",
    )
    parser.add_argument(
        "--resamples",
        type=BoundedNumber(int, 1, 1_000_000),
        default=DEFAULT_RESAMPLES,
        metavar="B",
        help=f"bootstrap resamples (default {DEFAULT_RESAMPLES:,})",
    )
    parser.add_argument(
        "--confidence",
        type=BoundedNumber(float, 0.5, 0.999),
        default=DEFAULT_CONFIDENCE,
        metavar="C",
        help=f"confidence level of the intervals (default {DEFAULT_CONFIDENCE})",
    )
    parser.add_argument(
        "--seed",
        type=BoundedNumber(int, 0, 2**32 - 1),
        default=DEFAULT_SEED,
        help=f"seed of the bootstrap's resampling, fixed for reproducible output "
        f"(default {DEFAULT_SEED})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def run(args: argparse.Namespace) -> int:
    comparison = compare_runs(
        args.runs,
        split=args.split,
        resamples=args.resamples,
        confidence=args.confidence,
        seed=args.seed,
    )
    if args.json:
        sys.stdout.write(
            orjson.dumps(comparison.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n"
        )
        return 0
    print_comparison(comparison)
    return 0


def format_difference(difference: PairedDifference | None, note: str | None) -> str:
    """'+57.5 [+42.5, +72.5] n=40 *' in points; the note when there is no difference."""
    if difference is None:
        return note or "-"
    mark = " *" if difference.excludes_zero else ""
    return (
        f"{100 * difference.mean:+.1f} [{100 * difference.low:+.1f}, {100 * difference.high:+.1f}]"
        f" n={difference.n_shared}{mark}"
    )


def _score_cell(row: TaskComparison, index: int) -> str:
    score = row.scores[index]
    return "-" if score is None else f"{percent(score)} ({row.samples[index]})"


def _row_cells(row: TaskComparison, columns: int) -> list[str]:
    cells = [row.task, *(_score_cell(row, index) for index in range(columns))]
    for index in range(1, columns):
        difference, note = row.differences[index], row.notes[index]
        text = format_difference(difference, note)
        cells.append(f"{text} ({note})" if difference is not None and note else text)
    return cells


def print_comparison(comparison: Comparison) -> None:
    console = Console()
    runs = comparison.runs
    level = f"{100 * comparison.confidence:g}%"
    table = Table(
        title=f"{comparison.split} scores in % (samples scored), baseline {runs[0].label}"
    )
    table.add_column("task", overflow="fold")
    for run in runs:
        table.add_column(run.label, overflow="fold")
    for run in runs[1:]:
        table.add_column(f"{run.label} - baseline [{level} CI]", overflow="fold")
    for row in comparison.tasks:
        table.add_row(*_row_cells(row, len(runs)))
    if comparison.overall is not None:
        table.add_section()
        table.add_row(*_row_cells(comparison.overall, len(runs)))
    console.print(table)
    console.print(
        f"Differences in points over the samples both runs scored (n, matched by sample id), "
        f"with a paired bootstrap {level} interval ({comparison.resamples:,} resamples, seed "
        f"{comparison.seed}); * the interval excludes 0: a difference beyond the noise of these "
        "samples. An interval containing 0 cannot tell the two apart."
        + (
            " The mean over tasks weighs each task the same (its interval resamples within "
            "each task)."
            if comparison.overall is not None
            else ""
        ),
        highlight=False,
    )
    print_costs(console, comparison)


def print_costs(console: Console, comparison: Comparison) -> None:
    table = Table(title="Cost of each run (all its sessions)")
    for column in ("run", "kind", "calls", "cache hits", "tokens", "dollars"):
        table.add_column(column, overflow="fold")
    seen: set[Path] = set()
    for run in comparison.runs:
        if run.path in seen:
            continue  # the prompts of one evaluation share its cost
        seen.add(run.path)
        cost = run.cost
        table.add_row(
            str(run.path),
            run.kind,
            format_count(cost.calls),
            format_count(cost.cache_hits),
            format_count(cost.tokens),
            format_dollars(cost),
        )
    console.print(table)
