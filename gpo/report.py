"""Reports on run directories: a PNG of the optimization curves and a Markdown summary.

One or several run directories (e.g. one per method) go into one report:
- the PNG has one panel per task: dev score over the steps for each run, test scores as markers
  (every step's when the run scored them, else the initial and final prompt's), and the word
  budget as a dashed line on a second axis;
- the Markdown holds the score table in the paper's layout (rows: methods, columns: benchmark
  groups, test accuracy in %), per-task scores, every final prompt, and the cost breakdown per
  model and phase, with improvement per dollar as in the paper's Figure 1.
A run still in progress (or stopped) is read from its per-task files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import aggregate
from gpo.config import COT_PROMPT
from gpo.ledger_view import run_totals
from gpo.results import TaskResult
from gpo.run_dir import RunDirectory

PNG_NAME = "report.png"
MARKDOWN_NAME = "report.md"


@dataclass(frozen=True, slots=True)
class TaskCurve:
    """One task of one run: the trajectory as recorded, step by step."""

    task: str
    steps: tuple[int, ...]
    dev_scores: tuple[float, ...]
    word_budgets: tuple[int | None, ...]
    result: TaskResult | None


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a report needs from one run directory."""

    path: Path
    method: str
    status: str
    curves: tuple[TaskCurve, ...]
    summary: dict[str, Any] | None
    ledgers: tuple[dict[str, Any], ...]

    @property
    def label(self) -> str:
        return f"{self.method} ({self.path.name})"


def load_run(path: str | Path) -> RunReport:
    run_dir = RunDirectory.open_existing(path, flag="gpo report")
    config = run_dir.read_config()
    state = run_dir.read_state()
    method = str(config.get("optimizer", {}).get("method", "?"))
    task_names = list(config.get("tasks") or run_dir.task_names())
    curves = []
    for name in task_names:
        recorder = run_dir.task(name)
        rows = recorder.read_log("trajectory")
        stored = recorder.read_result()
        curves.append(
            TaskCurve(
                task=name,
                steps=tuple(int(row["step"]) for row in rows),
                dev_scores=tuple(float(row["dev_score"]) for row in rows),
                word_budgets=tuple(row.get("word_budget") for row in rows),
                result=TaskResult.from_json(stored) if stored else None,
            )
        )
    ledgers = [*run_dir.earlier_ledgers()]
    current = run_dir.read_ledger()
    if current is not None:
        ledgers.append(current)
    return RunReport(
        path=run_dir.path,
        method=method,
        status=str(state.get("status", "unknown")),
        curves=tuple(curves),
        summary=run_dir.read_summary(),
        ledgers=tuple(ledgers),
    )


# -- the plot ----------------------------------------------------------------------------------


def plot_runs(runs: Sequence[RunReport], out: Path) -> Path:
    """One panel per task: dev (lines), test (markers) and word budget (dashed, right axis)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(dict.fromkeys(curve.task for run in runs for curve in run.curves))
    if not tasks:
        tasks = ["(no task)"]
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False, layout="constrained"
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    legend: dict[str, Any] = {}
    for index, task in enumerate(tasks):
        axis = axes[index // columns][index % columns]
        budget_axis = None
        for run_index, run in enumerate(runs):
            colour = colours[run_index % len(colours)]
            curve = next((c for c in run.curves if c.task == task), None)
            if curve is None or not curve.steps:
                continue
            budget_axis = _plot_curve(axis, budget_axis, run.label, curve, colour)
        axis.set_title(task)
        axis.set_xlabel("step (0 = initial prompt)")
        axis.set_ylabel("score (%)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        for source in (axis, budget_axis):
            if source is None:
                continue
            for handle, label in zip(*source.get_legend_handles_labels(), strict=True):
                legend.setdefault(label, handle)
    for index in range(len(tasks), rows * columns):
        axes[index // columns][index % columns].axis("off")
    if legend:
        figure.legend(
            list(legend.values()),
            list(legend),
            loc="outside lower center",
            ncols=min(3, len(legend)),
            fontsize=8,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _plot_curve(axis: Any, budget_axis: Any, label: str, curve: TaskCurve, colour: str) -> Any:
    """One run's curve on a task's panel: dev line, test markers, word budget (right axis).

    Returns the panel's word-budget axis, created on first use (None while no run has budgets).
    """
    x = [step + 1 for step in curve.steps]  # the initial prompt is step 0
    axis.plot(
        x,
        [100 * s for s in curve.dev_scores],
        "-o",
        ms=3,
        color=colour,
        label=f"{label} dev",
    )
    if curve.result is not None:
        _plot_test_scores(axis, label, curve.result, colour)
    budgets = [
        (step + 1, b)
        for step, b in zip(curve.steps, curve.word_budgets, strict=True)
        if b is not None
    ]
    if budgets:
        budget_axis = budget_axis or axis.twinx()
        budget_axis.plot(
            [b[0] for b in budgets],
            [b[1] for b in budgets],
            "x--",
            drawstyle="steps-mid",
            color=colour,
            alpha=0.45,
            label=f"{label} word budget",
        )
        budget_axis.set_ylabel("word budget")
    return budget_axis


def _plot_test_scores(axis: Any, label: str, result: TaskResult, colour: str) -> None:
    """Test scores as markers: every step's when scored, else the initial and final prompt's."""
    if result.test_by_step:
        axis.plot(
            [step + 1 for step, _ in result.test_by_step],
            [100 * score for _, score in result.test_by_step],
            "s",
            ms=4,
            color=colour,
            alpha=0.6,
            label=f"{label} test",
        )
        return
    points = [(0, result.initial_test), (result.final_step + 1, result.final_test)]
    points = [(x_, y_) for x_, y_ in points if y_ is not None]
    if points:
        axis.plot(
            [p[0] for p in points],
            [100 * p[1] for p in points],
            "s",
            ms=5,
            color=colour,
            alpha=0.6,
            label=f"{label} test",
        )


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
        "| session | model | phase | requests | prompt tokens | completion tokens | cache hits "
        "| saved tokens | failures | cost ($) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for session, ledger in enumerate(run.ledgers, start=1):
        for row in ledger.get("rows", []):
            saved = row.get("saved_prompt_tokens", 0) + row.get("saved_completion_tokens", 0)
            failures = sum((row.get("failures") or {}).values())
            lines.append(
                f"| {session} | {row['model']} | {row['phase']} | {row['requests']:,} | "
                f"{row['prompt_tokens']:,} | {row['completion_tokens']:,} | "
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
        lines += ["### Final prompts", ""]
        for curve in run.curves:
            result = curve.result
            if result is None:
                continue
            score = f"dev {_pct(result.final_dev)}, test {_pct(result.final_test)}"
            lines += [f"**{curve.task}** (step {result.final_step}, {score}):", ""]
            lines += ["```text", result.final_prompt or "(empty prompt)", "```", ""]
        lines += ["### Cost", "", *cost_table(run), ""]
    return "\n".join(lines)


def write_report(run_paths: Sequence[str | Path], out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write `report.png` and `report.md` (into the first run directory unless `out_dir`)."""
    runs = [load_run(path) for path in run_paths]
    target = Path(out_dir) if out_dir is not None else runs[0].path
    target.mkdir(parents=True, exist_ok=True)
    png = plot_runs(runs, target / PNG_NAME)
    markdown = target / MARKDOWN_NAME
    markdown.write_text(markdown_report(runs, png.name), encoding="utf-8")
    return png, markdown
