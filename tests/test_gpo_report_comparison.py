"""`gpo report --html RUN RUN...`: the page comparing runs, from `gpo compare`'s data.

The renderer reads a comparison in `Comparison.to_json()` form (what `gpo compare --json`
prints), so it is tested here on such data written out by hand, and end to end (runs compared by
`gpo.run_comparison`, page opened in headless Chromium) where `gpo compare` is installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from gpo.cli import main
from gpo.methods import config_for_method
from gpo.report_comparison import interval_rows, render_comparison
from tests.test_gpo_optimizer import SMALL, optimize
from tests.test_gpo_report_html import SCRIPT, rendered_dom, section


def difference(mean: float, low: float, high: float, shared: int = 48) -> dict[str, Any]:
    return {
        "mean": mean,
        "low": low,
        "high": high,
        "n_shared": shared,
        "confidence": 0.95,
        "resamples": 10_000,
        "seed": 0,
        "excludes_zero": low > 0 or high < 0,
    }


def run(label: str, prompt: str, cost: float) -> dict[str, Any]:
    return {
        "label": label,
        "path": f"runs/{label}",
        "kind": "optimize",
        "prompt_index": None,
        "prompts": {"bbh/navigate": prompt, "bbh/web_of_lies": prompt},
        "samples": {"bbh/navigate": 48, "bbh/web_of_lies": 48},
        "cost": {
            "calls": 1200,
            "tokens": 345_678,
            "cost_usd": cost,
            "unpriced_models": [],
            "cache_hits": 3,
        },
    }


COMPARISON = {
    "split": "test",
    "baseline": "empty",
    "bootstrap": {"method": "paired", "resamples": 10_000, "confidence": 0.95, "seed": 0},
    "runs": [run("empty", "", 0.1234), run("gpo", f"{SCRIPT} Count the steps.", 1.5678)],
    "tasks": [
        {
            "task": "bbh/navigate",
            "scores": [0.5, 0.8125],
            "samples": [48, 48],
            "differences": [None, difference(0.3125, 0.1875, 0.4375)],
            "notes": [None, None],
        },
        {
            "task": "bbh/web_of_lies",
            "scores": [0.5, 0.52],
            "samples": [48, 48],
            "differences": [None, difference(0.02, -0.08, 0.12)],
            "notes": [None, None],
        },
    ],
    "overall": {
        "task": "mean over 2 tasks",
        "scores": [0.5, 0.66625],
        "samples": [96, 96],
        "differences": [None, difference(0.16625, 0.08, 0.25, 96)],
        "notes": [None, None],
    },
}


def test_comparison_page_shows_scores_intervals_costs_and_escapes_prompts() -> None:
    text = render_comparison(COMPARISON)
    table = section(text, "comparison")
    assert "81.25" in table and "50.00" in table
    # beyond noise: marked; within noise: shown, unmarked
    assert "+31.25 [+18.75, +43.75] *" in table
    assert "+2.00 [-8.00, +12.00]" in table and "+2.00 [-8.00, +12.00] *" not in table
    assert "+16.62 [+8.00, +25.00] *" in table  # the mean over tasks
    runs = section(text, "runs")
    assert "$0.1234" in runs and "$1.5678" in runs and "345,678" in runs
    assert "<script" not in text.lower() and "&lt;script&gt;" in text
    assert 'src="data:image/png;base64,' in section(text, "intervals")
    assert [row[0] for row in interval_rows(COMPARISON)] == [
        "bbh/navigate: gpo",
        "bbh/web_of_lies: gpo",
        "mean over 2 tasks: gpo",
    ]


def test_comparison_without_gpo_compare_is_a_clear_error(monkeypatch, tmp_path, capsys) -> None:
    real = importlib.import_module

    def without_compare(name: str, *args: Any) -> Any:
        if name == "gpo.run_comparison":
            raise ModuleNotFoundError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_compare)
    assert main(["report", "--html", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "one RUN_DIR at a time" in capsys.readouterr().err


async def test_comparison_of_two_runs_in_chromium(tmp_path: Path) -> None:
    pytest.importorskip("gpo.run_comparison", reason="gpo compare (gpo/run_comparison.py)")
    tasks = ("bbh/navigate",)
    await optimize(tmp_path / "cot", config_for_method("cot", dev_size=8, test_size=8), tasks=tasks)
    await optimize(tmp_path / "gpo", config_for_method("gpo", **SMALL), tasks=tasks)
    page = tmp_path / "comparison.html"
    runs = [str(tmp_path / "cot"), str(tmp_path / "gpo")]
    assert main(["report", "--html", *runs, "--out", str(page)]) == 0
    from gpo.run_comparison import compare_runs

    data = compare_runs(runs).to_json()
    dom = rendered_dom(page, tmp_path / "profile")
    table = section(dom, "comparison")
    (task,) = data["tasks"]
    for score in task["scores"]:
        assert f"{100 * score:.2f}" in table
    gap = task["differences"][1]
    assert f"{100 * gap['mean']:+.2f} [{100 * gap['low']:+.2f}, {100 * gap['high']:+.2f}]" in table
    for column in data["runs"]:
        assert f"${column['cost']['cost_usd']:.4f}" in section(dom, "runs")
