"""`gpo report RUN_DIR [RUN_DIR ...]`: a PNG of the optimization curves and a Markdown report,
or with `--html` one self-contained HTML page per run.

Several run directories (one per method, say) make one report with one row per method in the
paper-layout score table. Files go into the first run directory unless `--out` says otherwise.
`--html` writes `RUN/report.html` for each run directory or evaluation folder (`gpo eval
--out`); `--out FILE` names the page of a single run, or the folder of several runs' pages.
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
        help="plot and summarise optimization runs (--html: a page per run)",
        description="Write report.png (dev/test score over the steps, with the word budget) "
        "and report.md (score table, final prompts, cost breakdown) for run directories; with "
        "--html, a self-contained report.html per run directory or evaluation folder (scores, "
        "score curve, every candidate, meta-prompts, per-sample answers, cost).",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="output folder (default: the first RUN_DIR); with --html and one RUN_DIR the page's "
        "file (default: RUN_DIR/report.html), with several a folder for NAME.html pages",
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="write a self-contained HTML page per run instead (opens offline, no script)",
    )


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.html:
        from gpo.report_html import write_html_report

        for page in write_html_report(args.run_dirs, args.out):
            console.print(f"wrote {page}")
        return 0
    png, markdown = write_report(args.run_dirs, args.out)
    console.print(f"wrote {png}")
    console.print(f"wrote {markdown}")
    return 0
