"""`gpo report RUN_DIR [RUN_DIR ...]`: a PNG of the optimization curves and a Markdown report.

Several run directories (one per method, say) make one report with one row per method in the
paper-layout score table. Files go into the first run directory unless `--out` says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from gpo.report import write_report


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="plot and summarise optimization runs",
        description="Write report.png (dev/test score over the steps, with the word budget) "
        "and report.md (score table, final prompts, cost breakdown) for run directories.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="output folder (default: the first RUN_DIR)"
    )


def run(args: argparse.Namespace) -> int:
    png, markdown = write_report(args.run_dirs, args.out)
    console = Console()
    console.print(f"wrote {png}")
    console.print(f"wrote {markdown}")
    return 0
