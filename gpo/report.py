"""Reports on run directories: a PNG of the optimization curves and a Markdown summary.

One or several run directories (e.g. one per method) go into one report:
- the PNG (`gpo/report_plot.py`) has one panel per task: dev score over the steps for each run,
  test scores as markers (every step's when the run scored them, else the initial and final
  prompt's), and the word budget as a dashed line on a second axis;
- the Markdown holds the score table in the paper's layout (rows: methods, columns: benchmark
  groups, test accuracy in %), per-task scores, every final prompt, and the cost breakdown per
  model and phase, with improvement per dollar as in the paper's Figure 1.
A run still in progress (or stopped) is read from its per-task files (`gpo/report_runs.py`).
Steps are numbered as users see them everywhere: the initial prompt is step 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from benchmarks import aggregate
from gpo.config import COT_PROMPT
from gpo.ledger_view import run_totals
from gpo.report_plot import plot_runs
from gpo.report_runs import RunReport, TaskCurve, load_run
from gpo.results import TaskResult
from gpo.trajectory import shown_step

PNG_NAME = "report.png"
MARKDOWN_NAME = "report.md"

__all__ = ["RunReport", "TaskCurve", "load_run", "markdown_report", "plot_runs", "write_report"]


# -- the Markdown ------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _results(run: RunReport) -> list[TaskResult]:
    return [curve.result for curve in run.curves if curve.result is not None]


def _initial_label(prompt: str) -> str:
    if prompt == "":
        return "Empty"
    if prompt == COT_PROMPT:
        return "CoT"
    return f"Initial ({prompt[:30]})"


def score_table(runs: Sequence[RunReport]) -> list[str]:
    """Test scores (%) per benchmark group: the paper's Table 5 layout."""
    rows: dict[str, dict[str, float]] = {}
    for run in runs:
        results = _results(run)
        initial = {r.task: r.initial_test for r in results if r.initial_test is not None}
        final = {r.task: r.final_test for r in results if r.final_test is not None}
        prompts = {r.initial_prompt for r in results}
        if initial and len(prompts) == 1 and run.method not in ("empty", "cot"):
            rows.setdefault(_initial_label(prompts.pop()), aggregate(initial))
        if final:
            label = {"empty": "Empty", "cot": "CoT"}.get(run.method, run.method.upper())
            if sum(1 for r in runs if r.method == run.method) > 1:
                label = f"{label} ({run.path.name})"
            rows[label] = aggregate(final)
    groups = list(dict.fromkeys(group for scores in rows.values() for group in scores))
    if not groups:
        return ["No test scores yet."]
    lines = [
        "| Method | " + " | ".join(groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for label, scores in rows.items():
        lines.append(f"| {label} | " + " | ".join(_pct(scores.get(g)) for g in groups) + " |")
    return lines


def task_table(run: RunReport) -> list[str]:
    lines = [
        "| task | status | steps | initial dev | final dev | initial test | final test |",
        "|---|---|---|---|---|---|---|",
    ]
    for curve in run.curves:
        result = curve.result
        if result is None:
            best = max(curve.dev_scores) if curve.dev_scores else None
            first = curve.dev_scores[0] if curve.dev_scores else None
            lines.append(
                f"| {curve.task} | running | {max(0, len(curve.steps) - 1)} | "
                f"{_pct(first)} | {_pct(best)} | - | - |"
            )
            continue
        lines.append(
            f"| {curve.task} | {result.status} | {result.steps_done}/{result.steps_total} | "
            f"{_pct(result.initial_dev)} | {_pct(result.final_dev)} | "
            f"{_pct(result.initial_test)} | {_pct(result.final_test)} |"
        )
    return lines


def cost_table(run: RunReport) -> list[str]:
    if not run.ledgers:
        return ["No ledger recorded."]
    lines = [
        "| session | model | phase | requests | prompt tokens | of which cached "
        "| completion tokens | of which reasoning | cache hits | saved tokens | failures "
        "| cost ($) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for session, ledger in enumerate(run.ledgers, start=1):
        for row in ledger.get("rows", []):
            saved = row.get("saved_prompt_tokens", 0) + row.get("saved_completion_tokens", 0)
            failures = sum((row.get("failures") or {}).values())
            lines.append(
                f"| {session} | {row['model']} | {row['phase']} | {row['requests']:,} | "
                f"{row['prompt_tokens']:,} | {row.get('cached_prompt_tokens', 0):,} | "
                f"{row['completion_tokens']:,} | {row.get('reasoning_tokens', 0):,} | "
                f"{row['cache_hits']:,} | {saved:,} | {failures} | {row['cost_usd']:.4f} |"
            )
    totals = run_totals(list(run.ledgers))
    lines.append("")
    lines.append(
        f"Total: {totals.get('total_tokens', 0):,} tokens, ${totals.get('cost_usd', 0.0):.4f}, "
        f"{totals.get('cache_hits', 0):,} cache hits, {totals.get('wall_time_s', 0.0):.1f} s "
        f"over {totals.get('sessions', 0)} session(s)."
    )
    results = _results(run)
    gains = [
        r.final_test - r.initial_test
        for r in results
        if r.final_test is not None and r.initial_test is not None
    ]
    if gains:
        points = 100 * sum(gains) / len(gains)
        cost = float(totals.get("cost_usd", 0.0) or 0.0)
        tokens = int(totals.get("total_tokens", 0) or 0)
        parts = [f"Test improvement {points:+.2f} points"]
        if cost > 0:
            parts.append(f"{points / cost:+.2f} points per dollar")
        if tokens > 0:
            parts.append(f"{points / (tokens / 1e6):+.3f} points per million tokens")
        lines.append("")
        lines.append("; ".join(parts) + ".")
    unpriced = totals.get("unpriced_models") or []
    if unpriced:
        lines.append("")
        lines.append(f"No price was known for {', '.join(unpriced)}; their cost counts as $0.")
    return lines


def markdown_report(runs: Sequence[RunReport], png_name: str | None) -> str:
    lines = ["# Prompt optimization report", ""]
    lines += ["| run | method | status | tasks |", "|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.path} | {run.method} | {run.status} | {len(run.curves)} |")
    lines += ["", "## Test scores (%)", "", *score_table(runs), ""]
    if png_name:
        lines += [f"![dev and test score over the steps, with the word budget]({png_name})", ""]
    for run in runs:
        lines += [f"## {run.label}", "", "### Scores (%)", "", *task_table(run), ""]
        lines += [
            "### Final prompts",
            "",
            "Step k: the prompt after k optimization steps (0: the initial prompt).",
            "",
        ]
        for curve in run.curves:
            result = curve.result
            if result is None:
                continue
            score = f"dev {_pct(result.final_dev)}, test {_pct(result.final_test)}"
            step = shown_step(result.final_step)
            lines += [f"**{curve.task}** (step {step}, {score}):", ""]
            lines += ["```text", result.final_prompt or "(empty prompt)", "```", ""]
        lines += racing_section(run)
        lines += ["### Cost", "", *cost_table(run), ""]
    return "\n".join(lines)


def racing_section(run: RunReport) -> list[str]:
    """What `--racing` did, step by step (nothing when it was off)."""
    rows = [
        (curve.task, step)
        for curve in run.curves
        if curve.result is not None
        for step in curve.result.racing_steps
    ]
    if not rows:
        return []
    first = rows[0][1]
    lines = [
        "### Candidate racing",
        "",
        f"delta {first['delta']:g}, epsilon {first['epsilon']:.3g}; the chosen candidate of "
        "every step was scored on every dev sample.",
        "",
        "| task | step | candidates dropped | chains scored | of | saved |",
        "|---|---|---|---|---|---|",
    ]
    for task, step in rows:
        full, scored = int(step["chains_full"]), int(step["chains_scored"])
        lines.append(
            f"| {task} | {shown_step(int(step['step']))} | {step['dropped']} | {scored:,} "
            f"| {full:,} | {(full - scored) / full:.0%} |"
        )
    return [*lines, ""]


def write_report(run_paths: Sequence[str | Path], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write `report.png` and `report.md` (into the first run directory unless `out_dir`)."""
    runs = [load_run(path) for path in run_paths]
    target = Path(out_dir) if out_dir is not None else runs[0].path
    target.mkdir(parents=True, exist_ok=True)
    png = plot_runs(runs, target / PNG_NAME)
    markdown = target / MARKDOWN_NAME
    markdown.write_text(markdown_report(runs, png.name), encoding="utf-8")
    return png, markdown
