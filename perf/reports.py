"""Reports: a workload's results as the text table bench.py prints, and every workload with the
parameters and the Bar as Markdown."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from perf.results import ContenderMetrics, WorkloadReport

if TYPE_CHECKING:
    from perf.bar import BarLine

COLUMNS = (
    ("contender", 19),
    ("wall s", 9),
    ("prompts/s", 10),
    ("% limit", 8),
    ("x engine", 9),
    ("cpu s", 8),
    ("cpu us/p", 9),
    ("HTTP", 8),
    ("429s", 6),
    ("fail", 6),
    ("peak MB", 8),
    ("answers", 10),
)


def _fmt(value: float | int | None, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def _row_cells(row: ContenderMetrics) -> list[str]:
    mark = "~" if row.extrapolated else ""
    return [
        row.contender,
        mark + _fmt(row.wall_s, ".2f"),
        mark + _fmt(row.scored_prompts_per_s, ",.0f"),
        _fmt(row.percent_of_limit, ".1f"),
        _fmt(row.time_vs_engine, ".2f"),
        mark + _fmt(row.client_cpu_s, ".2f"),
        _fmt(row.client_cpu_us_per_scored_prompt, ",.0f"),
        mark + _fmt(row.http_requests, ","),
        mark + _fmt(row.rate_limited_429, ","),
        mark + _fmt(row.failures, ",") + ("!" if row.unanswered else ""),
        _fmt(row.peak_memory_mb, ".1f"),
        row.answers_vs_engine,
    ]


def render_table(report: WorkloadReport) -> str:
    lines = [
        "",
        f"== {report.key}: {report.title} ==",
        f"work:   {report.description} ({report.rows[0].scored_prompts:,} scored prompts)"
        if report.rows
        else f"work:   {report.description}",
        f"server: {report.server}",
    ]
    if report.limit_note:
        lines.append(f"limit:  {report.limit_note}")
    header = "  ".join(name.rjust(width) for name, width in COLUMNS)
    lines.append(header)
    lines.append("-" * len(header))
    for row in report.rows:
        cells = _row_cells(row)
        lines.append(
            "  ".join(cell.rjust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True))
        )
    for row in report.rows:
        if row.note:
            lines.append(f"  {row.contender}: {row.note}")
    if any(r.extrapolated for r in report.rows):
        lines.append("  ~ extrapolated linearly from a measured prefix")
    if any(r.unanswered for r in report.rows):
        lines.append("  ! some chains were never answered: that row did less work")
    return "\n".join(lines)


def render_markdown(
    reports: Sequence[WorkloadReport], parameters: dict[str, Any], bar: Sequence[BarLine]
) -> str:
    out = ["# bench.py results", ""]
    out += [f"- {k}: {v}" for k, v in parameters.items()]
    for report in reports:
        out += ["", f"## {report.key}: {report.title}", "", f"Work: {report.description}."]
        out.append(f"Server: {report.server}.")
        if report.limit_note:
            out.append(f"Limit: {report.limit_note}.")
        out += ["", "| " + " | ".join(name for name, _ in COLUMNS) + " |"]
        out.append("|" + "---|" * len(COLUMNS))
        for row in report.rows:
            out.append("| " + " | ".join(_row_cells(row)) + " |")
        notes = [f"- {row.contender}: {row.note}" for row in report.rows if row.note]
        if notes:
            out += ["", *notes]
    out += ["", "## Bar", ""]
    out += [f"- {line.render()}" for line in bar]
    return "\n".join(out) + "\n"
