"""`gpo report RUN_DIR [RUN_DIR ...]`: a PNG of the optimization curves and a Markdown report,
or with `--html` a self-contained HTML page: of one run, or comparing several.

Several run directories (one per method, say) make one report with one row per method in the
paper-layout score table. Files go into the first run directory unless `--out` says otherwise.
`--html` writes `RUN/report.html` for a run directory or evaluation folder (`gpo eval --out`);
with several, one page comparing them as `gpo compare` does (`FIRST_RUN/comparison.html`).
`--out FILE` names the page.
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
        "--html, a self-contained report.html of a run directory or evaluation folder (scores, "
        "score curve, every candidate, meta-prompts, per-sample answers, cost), or with several "
        "a page comparing them with paired bootstrap intervals (as gpo compare).",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--out",
        type=Path,
        metavar="PATH",
        help="output folder (default: the first RUN_DIR); with --html the page's file (default: "
        "RUN_DIR/report.html, or with several RUN_DIRs FIRST_RUN_DIR/comparison.html)",
    )
    parser.add_argument(
        "--html",
        action="store_true",
        help="write a self-contained HTML page instead (opens offline, no script): of one run, "
        "or comparing several as gpo compare does (the first is the baseline)",
    )


def run(args: argparse.Namespace) -> int:
    console = Console()
    if args.html and len(args.run_dirs) > 1:
        from gpo.report_comparison import write_comparison_report

        console.print(f"wrote {write_comparison_report(args.run_dirs, args.out)}")
        return 0
    if args.html:
        from gpo.report_html import write_html_report

        (page,) = write_html_report(args.run_dirs, args.out)
        console.print(f"wrote {page}")
        return 0
    png, markdown = write_report(args.run_dirs, args.out)
    console.print(f"wrote {png}")
    console.print(f"wrote {markdown}")
    return 0
