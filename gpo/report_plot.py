"""The report's plot: one panel per task, the runs' dev and test scores over the steps.

Steps are numbered as users see them (`gpo.trajectory.shown_step`: the initial prompt is step 0).
Every panel shares one score scale, so tasks can be compared at a glance; each run has its own
colour and marker shape and is shifted a little sideways, so runs with equal scores at a step
(every run's initial prompt, say) stay visible instead of hiding each other. Dev scores are
lines with filled markers, test scores hollow markers, the word budget a dashed line on a
shared right axis. The legend names each run once, then the three styles, and the image is
saved with its bounding box grown to hold everything, so no label is cut at an edge.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpo.report_runs import RunReport, TaskCurve
from gpo.results import TaskResult
from gpo.trajectory import INITIAL_STEP, shown_step

MARKERS = ("o", "s", "D", "^", "v", "P", "X", "*", "<", ">")
GREY = "0.35"
DPI = 110
# A legend label longer than this gets a row of its own (several per row would overflow).
LONG_LABEL = 40


@dataclass(frozen=True, slots=True)
class RunStyle:
    """How one run is drawn: colour, marker shape and sideways shift (in steps)."""

    colour: str
    marker: str
    shift: float


def run_styles(count: int, colours: Sequence[str]) -> list[RunStyle]:
    """One style per run: shifts spread symmetrically, at most 0.3 step either side."""
    spread = min(0.12, 0.6 / max(count, 1))
    return [
        RunStyle(
            colour=colours[index % len(colours)],
            marker=MARKERS[index % len(MARKERS)],
            shift=(index - (count - 1) / 2) * spread,
        )
        for index in range(count)
    ]


def build_figure(runs: Sequence[RunReport]) -> Any:
    """The matplotlib figure: one panel per task, sharing the score scale."""
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
        rows,
        columns,
        figsize=(5.2 * columns, 3.6 * rows),
        squeeze=False,
        sharey=True,
        layout="constrained",
    )
    styles = run_styles(len(runs), plt.rcParams["axes.prop_cycle"].by_key()["color"])
    budget_axes: list[Any] = []
    shown = {"test": False, "budget": False}
    for index, task in enumerate(tasks):
        axis = axes[index // columns][index % columns]
        budget_axis = None
        for run, style in zip(runs, styles, strict=True):
            curve = next((c for c in run.curves if c.task == task), None)
            if curve is None or not curve.steps:
                continue
            shown["test"] |= _plot_dev_and_test(axis, curve, style)
            if any(b is not None for b in curve.word_budgets):
                budget_axis = budget_axis or _budget_axis(axis, budget_axes)
                _plot_budget(budget_axis, curve, style)
                shown["budget"] = True
        axis.set_title(task)
        axis.set_xlabel("step (0 = initial prompt)")
        if index % columns == 0:
            axis.set_ylabel("score (%)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for index in range(len(tasks), rows * columns):
        axes[index // columns][index % columns].axis("off")
    _add_legend(figure, runs, styles, shown)
    return figure


def _budget_axis(axis: Any, budget_axes: list[Any]) -> Any:
    """The panel's word-budget axis, sharing one scale with the other panels'."""
    budget_axis = axis.twinx()
    if budget_axes:
        budget_axis.sharey(budget_axes[0])
    budget_axes.append(budget_axis)
    budget_axis.set_ylabel("word budget", color=GREY)
    budget_axis.tick_params(axis="y", colors=GREY)
    return budget_axis


def _plot_dev_and_test(axis: Any, curve: TaskCurve, style: RunStyle) -> bool:
    """Dev line with filled markers; test scores as hollow markers. True when any test."""
    axis.plot(
        [shown_step(step) + style.shift for step in curve.steps],
        [100 * score for score in curve.dev_scores],
        "-",
        marker=style.marker,
        ms=4,
        color=style.colour,
    )
    points = scored_test_points(curve.result) if curve.result is not None else []
    if not points:
        return False
    axis.plot(
        [shown_step(step) + style.shift for step, _ in points],
        [100 * score for _, score in points],
        linestyle="none",
        marker=style.marker,
        ms=7,
        markerfacecolor="none",
        markeredgewidth=1.4,
        color=style.colour,
    )
    return True


def scored_test_points(result: TaskResult) -> list[tuple[int, float]]:
    """(trajectory step, test score): every step's when scored, else the initial and final."""
    if result.test_by_step:
        return list(result.test_by_step)
    points = [(INITIAL_STEP, result.initial_test), (result.final_step, result.final_test)]
    unique = dict((step, score) for step, score in points if score is not None)
    return list(unique.items())


def _plot_budget(budget_axis: Any, curve: TaskCurve, style: RunStyle) -> None:
    budgets = [
        (shown_step(step) + style.shift, budget)
        for step, budget in zip(curve.steps, curve.word_budgets, strict=True)
        if budget is not None
    ]
    budget_axis.plot(
        [b[0] for b in budgets],
        [b[1] for b in budgets],
        "--",
        drawstyle="steps-mid",
        color=style.colour,
        alpha=0.45,
    )


def _add_legend(
    figure: Any, runs: Sequence[RunReport], styles: Sequence[RunStyle], shown: dict[str, bool]
) -> None:
    """Below the panels: one entry per run (colour and marker), then one per line style."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color=style.colour, marker=style.marker, ms=5, label=run.label)
        for run, style in zip(runs, styles, strict=True)
    ]
    handles.append(Line2D([], [], color=GREY, marker="o", ms=4, label="dev score"))
    if shown["test"]:
        handles.append(
            Line2D(
                [],
                [],
                color=GREY,
                marker="o",
                ms=7,
                markerfacecolor="none",
                linestyle="none",
                label="test score",
            )
        )
    if shown["budget"]:
        handles.append(
            Line2D([], [], color=GREY, linestyle="--", alpha=0.6, label="word budget (right axis)")
        )
    longest = max(len(handle.get_label()) for handle in handles)
    figure.legend(
        handles=handles,
        loc="outside lower center",
        ncols=1 if longest > LONG_LABEL else min(3, len(handles)),
        fontsize=8,
    )


def save_figure(figure: Any, target: Path | io.BytesIO) -> None:
    """Save as PNG, the bounding box grown to hold the legend and every label."""
    from matplotlib import pyplot as plt

    try:
        figure.savefig(target, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(figure)


def plot_runs(runs: Sequence[RunReport], out: Path) -> Path:
    """Write the plot of `runs` to `out` (a PNG)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_figure(build_figure(runs), out)
    return out


def png_bytes(runs: Sequence[RunReport]) -> bytes:
    """The plot of `runs` as PNG bytes (the HTML report embeds them)."""
    buffer = io.BytesIO()
    save_figure(build_figure(runs), buffer)
    return buffer.getvalue()
