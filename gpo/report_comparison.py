"""`gpo report --html RUN RUN...`: one self-contained HTML page comparing runs.

It renders what `gpo compare` computes (`gpo.run_comparison.compare_runs`), read through the
comparison's JSON form (`Comparison.to_json()`, the same data `gpo compare --json` prints): per
task each run's score, and each run minus the first (the baseline) with its paired bootstrap
interval over the samples both scored, marked when the interval excludes 0; the mean over
tasks; each run's prompts and cost. The intervals are drawn too (one row per task and run, a
line at 0), and the optimize runs' score curves side by side (`gpo/report_plot.py`). Like the
run page (`gpo/report_html.py`), the page loads nothing and runs no script, and every value is
escaped by the template (`gpo/templates/report_comparison.html.j2`).
"""

from __future__ import annotations

import base64
import importlib
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backends.errors import ConfigError
from gpo.report_html import environment
from gpo.report_html_data import run_kind
from gpo.report_plot import DPI, png_bytes
from gpo.report_runs import load_run

COMPARISON_NAME = "comparison.html"
TEMPLATE = "report_comparison.html.j2"


def compare(paths: Sequence[Path]) -> Mapping[str, Any]:
    """`compare_runs(paths).to_json()`; a clear error when `gpo compare` is not installed."""
    try:
        module = importlib.import_module("gpo.run_comparison")
    except ModuleNotFoundError:
        raise ConfigError(
            "gpo report --html with several RUN_DIRs compares them with gpo compare "
            "(gpo/run_comparison.py), which this installation lacks; give one RUN_DIR at a time"
        ) from None
    return module.compare_runs(paths).to_json()


def interval_rows(data: Mapping[str, Any]) -> list[tuple[str, float, float, float, bool]]:
    """(label, mean, low, high, excludes 0) in points, per task then run, baseline left out."""
    labels = [run["label"] for run in data["runs"]]
    rows = []
    tasks = [*data["tasks"], *([data["overall"]] if data.get("overall") else [])]
    for task in tasks:
        for label, difference in zip(labels, task["differences"], strict=True):
            if difference:
                rows.append(
                    (
                        f"{task['task']}: {label}",
                        100 * difference["mean"],
                        100 * difference["low"],
                        100 * difference["high"],
                        bool(difference["excludes_zero"]),
                    )
                )
    return rows


def interval_png(data: Mapping[str, Any]) -> bytes | None:
    """The differences from the baseline with their intervals (points), a line at 0."""
    rows = interval_rows(data)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 0.8 + 0.32 * len(rows)), layout="constrained")
    for y, (_, mean, low, high, beyond) in enumerate(rows):
        colour = "#1a7f37" if beyond and mean > 0 else "#cf222e" if beyond else "0.4"
        axis.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colour, capsize=3)
    axis.axvline(0, color="0.2", linewidth=1)
    axis.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=8)
    axis.invert_yaxis()
    confidence = 100 * float(data.get("bootstrap", {}).get("confidence", 0.95))
    axis.set_xlabel(f"difference from {data['baseline']} (points, {confidence:.0f}% interval)")
    axis.grid(axis="x", alpha=0.3)
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else f"data:image/png;base64,{base64.b64encode(png).decode()}"


def render_comparison(data: Mapping[str, Any], paths: Sequence[Path] = ()) -> str:
    """The page for a comparison in `Comparison.to_json()` form; `paths` adds score curves."""
    optimize_runs = [load_run(path) for path in paths if run_kind(Path(path)) == "optimize"]
    curves = png_bytes(optimize_runs) if optimize_runs else None
    return (
        environment()
        .get_template(TEMPLATE)
        .render(
            data=data,
            intervals=_data_uri(interval_png(data)),
            curves=_data_uri(curves),
        )
    )


def write_comparison_report(paths: Sequence[str | Path], out: Path | None = None) -> Path:
    """Compare the runs at `paths` (the first is the baseline) and write the page
    (`out`, default `comparison.html` in the first run's folder)."""
    folders = [Path(path) for path in paths]
    data = compare(folders)
    target = Path(out) if out is not None else folders[0] / COMPARISON_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_comparison(data, folders), encoding="utf-8")
    return target
