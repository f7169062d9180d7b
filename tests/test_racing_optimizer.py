"""`gpo optimize --racing`: the same choices as scoring every candidate, at fewer scorer chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import PromptLayout
from engine.evaluator import Evaluator, EvaluatorSettings
from engine.racing import RacingSettings
from gpo.config import OptimizerConfig
from gpo.methods import config_for_method
from gpo.optimize_args import build_optimize_parser, optimizer_config_from_args
from gpo.optimize_display import racing_line
from gpo.report import write_report
from gpo.run_dir import RunDirectory
from gpo.runner import RunSpec, run_optimization
from tests.gpo_fakes import DATA_DIR, FakeOptimizer, FakeScorer
from tests.test_gpo_optimizer import open_fake_engines, read_jsonl

SIZES = {"train_size": 24, "dev_size": 48, "test_size": 8, "candidates": 8, "steps": 3}


async def run(path: Path, config: OptimizerConfig) -> dict[str, Any]:
    run_dir = RunDirectory.create(path)
    run_dir.write_config({"optimizer": config.to_json()})
    spec = RunSpec(tasks=("bbh/navigate",), optimizer=config, data_dir=str(DATA_DIR))
    async with open_fake_engines(path, FakeScorer(), FakeOptimizer()) as (scorer, optimizer):
        evaluator = Evaluator(scorer, EvaluatorSettings(layout=PromptLayout()))
        return await run_optimization(
            spec, scorer=scorer, optimizer=optimizer, run_dir=run_dir, evaluator=evaluator
        )


def task_log(path: Path, name: str) -> list[dict[str, Any]]:
    return read_jsonl(path / "tasks" / "bbh__navigate" / f"{name}.jsonl")


@pytest.mark.asyncio
async def test_racing_chooses_as_full_scoring_does_with_fewer_chains(tmp_path: Path) -> None:
    plain = config_for_method("gpo", **SIZES)
    raced = plain.replace(racing=RacingSettings())
    await run(tmp_path / "plain", plain)
    summary = await run(tmp_path / "raced", raced)
    plain_steps = task_log(tmp_path / "plain", "trajectory")
    raced_steps = task_log(tmp_path / "raced", "trajectory")
    assert [r["prompt"] for r in raced_steps] == [r["prompt"] for r in plain_steps]
    assert [r["dev_score"] for r in raced_steps] == [r["dev_score"] for r in plain_steps]
    chains = {
        name: sum(1 for r in task_log(tmp_path / name, "scores") if r["purpose"] == "candidates")
        for name in ("plain", "raced")
    }
    saved = sum(r["racing"]["chains_saved"] for r in raced_steps if "racing" in r)
    assert saved > 0 and chains["raced"] == chains["plain"] - saved
    dropped = [r for r in task_log(tmp_path / "raced", "candidates") if r.get("raced") == "dropped"]
    assert dropped and all(r["dev_score"] is None and not r["chosen"] for r in dropped)
    assert all(0 < r["partial_samples"] <= 48 for r in dropped)
    drops = [d for r in raced_steps if "racing" in r for d in r["racing"]["dropped"]]
    assert drops and all(d["after_samples"] < 48 for d in drops)
    config = orjson.loads((tmp_path / "raced" / "config.json").read_bytes())
    assert config["optimizer"]["racing"]["delta"] == 0.05
    (task,) = summary["tasks"]
    assert sum(s["chains_full"] - s["chains_scored"] for s in task["racing"]) == saved
    assert f"{saved:,} saved" in (racing_line(summary["tasks"]) or "")
    _, markdown = write_report([tmp_path / "raced"])
    assert "### Candidate racing" in markdown.read_text()


@pytest.mark.asyncio
async def test_racing_off_writes_nothing_about_racing(tmp_path: Path) -> None:
    await run(tmp_path / "plain", config_for_method("gpo", **{**SIZES, "steps": 1}))
    config = orjson.loads((tmp_path / "plain" / "config.json").read_bytes())
    assert "racing" not in config["optimizer"]
    result = orjson.loads(
        (tmp_path / "plain" / "tasks" / "bbh__navigate" / "result.json").read_bytes()
    )
    assert "racing" not in result
    for name in ("trajectory", "candidates"):
        rows = task_log(tmp_path / "plain", name)
        assert all("racing" not in r and "raced" not in r for r in rows)


def test_racing_flags() -> None:
    parser = build_optimize_parser()
    args = parser.parse_args(["--task", "bbh/navigate", "--racing", "--racing-delta", "0.01"])
    config = optimizer_config_from_args(args)
    assert config.racing == RacingSettings(delta=0.01)
    assert OptimizerConfig.from_json(config.to_json()) == config
    off = optimizer_config_from_args(parser.parse_args(["--task", "bbh/navigate"]))
    assert off.racing is None
    with pytest.raises(Exception, match="--racing-delta needs --racing"):
        optimizer_config_from_args(parser.parse_args(["--task", "x", "--racing-delta", "0.01"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--task", "x", "--racing", "--racing-delta", "0.9"])
