"""`gpo report`: the PNG and the Markdown report of one or several runs."""

from __future__ import annotations

from pathlib import Path

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
