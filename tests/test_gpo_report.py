"""`gpo report`: the PNG and the Markdown report of one or several runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpo.methods import config_for_method
from gpo.report import load_run, write_report
from tests.test_gpo_optimizer import SMALL, optimize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


async def test_report_of_three_methods_has_the_paper_table_prompts_and_costs(
    tmp_path: Path,
) -> None:
    tasks = ("bbh/navigate", "bbh/sports_understanding")
    gpo, *_ = await optimize(
        tmp_path / "gpo",
        config_for_method("gpo", **SMALL, test_every_step=True),
        tasks=tasks,
    )
    await optimize(tmp_path / "pe2", config_for_method("pe2", **SMALL), tasks=tasks)
    await optimize(tmp_path / "cot", config_for_method("cot", dev_size=8, test_size=8), tasks=tasks)
    png, markdown = write_report(
        [tmp_path / "gpo", tmp_path / "pe2", tmp_path / "cot"], tmp_path / "report"
    )
    assert png.read_bytes().startswith(PNG_SIGNATURE)
    assert png.stat().st_size > 10_000
    text = markdown.read_text()
    header = next(line for line in text.splitlines() if line.startswith("| Method |"))
    assert header == "| Method | bbh |"
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for label in ("CoT", "GPO", "PE2"):
        assert label in rows
    gpo_bbh = gpo["groups"]["final_test"]["bbh"]
    assert f"| GPO | {100 * gpo_bbh:.2f} |" in text
    for task in gpo["tasks"]:
        assert task["final_prompt"] in text
    assert "| 1 | fake-optimizer | optimizing |" in text
    assert "points per dollar" in text
    assert "![dev and test score" in text


async def test_report_reads_a_run_that_stopped_on_its_budget(tmp_path: Path) -> None:
    config = config_for_method("gpo", **{**SMALL, "epochs": 3})
    await optimize(tmp_path / "run", config, budget_usd=0.005)
    run = load_run(tmp_path / "run")
    assert run.status == "stopped"
    (curve,) = run.curves
    assert curve.result is not None and curve.result.status == "stopped"
    assert len(curve.steps) == curve.result.steps_done + 1
    png, markdown = write_report([tmp_path / "run"])
    assert png.parent == tmp_path / "run"
    assert "| bbh/navigate | stopped |" in markdown.read_text()


# -- the plot: nothing cut, no run hidden, one scale, one step numbering ----------------------

LONG = "bbh-navigate-sports-understanding-2026-11-29T15-52-05-seed-0"


async def three_runs(base: Path, suffix: str = "") -> list[Path]:
    """GPO (test scored every step), PE2 and CoT on two BBH tasks, in `base/METHOD{suffix}`."""
    tasks = ("bbh/navigate", "bbh/sports_understanding")
    configs = {
        "gpo": config_for_method("gpo", **SMALL, test_every_step=True),
        "pe2": config_for_method("pe2", **SMALL),
        "cot": config_for_method("cot", dev_size=8, test_size=8),
    }
    paths = []
    for method, config in configs.items():
        paths.append(base / f"{method}{suffix}")
        await optimize(paths[-1], config, tasks=tasks)
    return paths


def drawn_figure(monkeypatch: Any, runs: list[Path], out: Path) -> tuple[Any, Path]:
    """`write_report`'s figure, caught as it is saved, and the PNG it wrote."""
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    original = Figure.savefig

    def savefig(self: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    png, _ = write_report(runs, out)
    (figure,) = saved
    return figure, png


def panels(figure: Any) -> list[Any]:
    """The task panels (their titles are task names), not the word-budget twins."""
    return [axis for axis in figure.axes if axis.get_title()]


async def test_plot_legend_and_labels_fit_inside_the_image(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.image import imread

    runs = await three_runs(tmp_path, suffix=f"-{LONG}")
    _, png = drawn_figure(monkeypatch, runs, tmp_path / "report")
    pixels = imread(png)[:, :, :3]
    for name, edge in {
        "left": pixels[:, 0],
        "right": pixels[:, -1],
        "top": pixels[0, :],
        "bottom": pixels[-1, :],
    }.items():
        assert edge.min() > 0.95, f"something is drawn across the image's {name} edge (cut off)"


async def test_plot_runs_with_equal_scores_stay_visible(tmp_path: Path, monkeypatch) -> None:
    runs = await three_runs(tmp_path)
    figure, _ = drawn_figure(monkeypatch, runs, tmp_path / "report")
    for axis in panels(figure):
        points: dict[tuple[float, float], set[str]] = {}
        for line in axis.get_lines():
            colour = str(line.get_color())
            for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True):
                points.setdefault((round(float(x), 6), round(float(y), 6)), set()).add(colour)
        # every run scored the same initial prompt alike: their markers must not coincide
        hidden = {point: colours for point, colours in points.items() if len(colours) > 1}
        assert not hidden, f"{axis.get_title()}: runs drawn on the same spot {hidden}"


async def test_plot_panels_share_one_score_scale(tmp_path: Path, monkeypatch) -> None:
    runs = await three_runs(tmp_path)
    figure, _ = drawn_figure(monkeypatch, runs, tmp_path / "report")
    limits = {axis.get_title(): axis.get_ylim() for axis in panels(figure)}
    assert len(limits) == 2
    assert len(set(limits.values())) == 1, limits


async def test_report_numbers_steps_as_the_plot_does(tmp_path: Path, monkeypatch) -> None:
    """The initial prompt is step 0 in report.md and on the plot's x-axis alike."""
    runs = await three_runs(tmp_path)
    figure, _ = drawn_figure(monkeypatch, runs[:1], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    run = load_run(runs[0])
    for curve in run.curves:
        result = curve.result
        assert result is not None
        shown = result.final_step + 1  # trajectory step -1 is the initial prompt
        assert f"**{curve.task}** (step {shown}," in text
        (axis,) = [a for a in panels(figure) if a.get_title() == curve.task]
        dev = axis.get_lines()[0]
        final_x = [
            x
            for x, y in zip(dev.get_xdata(), dev.get_ydata(), strict=True)
            if abs(y - 100 * result.final_dev) < 1e-9
        ]
        assert round(final_x[0]) == shown
    initial_x = panels(figure)[0].get_lines()[0].get_xdata()[0]
    assert round(initial_x) == 0
