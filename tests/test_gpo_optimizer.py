"""The optimization loop under the real engine, cache and evaluator, with fake models."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest

from backends.errors import ClientRequestError
from benchmarks import PromptLayout, load_task
from engine.budget import Budget
from engine.cache import ResponseCache
from engine.engine import Engine, EngineConfig
from engine.evaluator import Evaluator, EvaluatorSettings
from engine.ledger import Ledger
from engine.prices import ModelPrice, PriceTable
from gpo.config import OptimizerConfig
from gpo.methods import config_for_method
from gpo.run_dir import RunDirectory
from gpo.runner import RunSpec, run_optimization
from gpo.schedules import WordBudgetSchedule
from gpo.step_plan import draw_format_indices, steps_per_epoch, total_steps
from gpo.task_scoring import ScoringFailed
from tests.gpo_fakes import DATA_DIR, FakeOptimizer, FakeScorer

SMALL = {"train_size": 16, "dev_size": 8, "test_size": 8, "candidates": 4, "epochs": 1}


class CountingEvaluator:
    """The real evaluator, with a log of every call (split, number of prompts)."""

    def __init__(self, inner: Evaluator) -> None:
        self.inner = inner
        self.calls: list[tuple[str, int]] = []

    async def evaluate(self, task: Any, prompts: Sequence[str], split: str = "eval", **kw: Any):
        self.calls.append((split, len(prompts)))
        return await self.inner.evaluate(task, prompts, split, **kw)


@contextlib.asynccontextmanager
async def open_fake_engines(
    run_dir: Path,
    scorer_backend: FakeScorer,
    optimizer_backend: FakeOptimizer,
    **engine_config: Any,
) -> AsyncIterator[tuple[Engine, Engine]]:
    prices = PriceTable(
        {
            "fake-scorer": ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0),
            "fake-optimizer": ModelPrice(input_per_mtok=10.0, output_per_mtok=30.0),
        }
    )
    ledger = Ledger(prices)
    budget = Budget(
        ledger,
        usd=engine_config.pop("budget_usd", None),
        tokens=engine_config.pop("budget_tokens", None),
    )
    cache = ResponseCache(run_dir / "cache.sqlite")
    config = EngineConfig(**engine_config)
    scorer = Engine(scorer_backend, config, cache=cache, ledger=ledger, budget=budget)
    optimizer = Engine(optimizer_backend, config, cache=cache, ledger=ledger, budget=budget)
    try:
        async with scorer, optimizer:
            yield scorer, optimizer
    finally:
        cache.close()


async def optimize(
    path: Path,
    config: OptimizerConfig,
    *,
    scorer_backend: FakeScorer | None = None,
    optimizer_backend: FakeOptimizer | None = None,
    resume: bool = False,
    tasks: tuple[str, ...] = ("bbh/navigate",),
    **engine_config: Any,
) -> tuple[dict[str, Any], CountingEvaluator, FakeScorer, FakeOptimizer]:
    scorer_backend = scorer_backend or FakeScorer(tasks)
    optimizer_backend = optimizer_backend or FakeOptimizer()
    run_dir = RunDirectory.open_existing(path) if resume else RunDirectory.create(path)
    if not resume:
        run_dir.write_config({"optimizer": config.to_json()})
    spec = RunSpec(tasks=tasks, optimizer=config, data_dir=str(DATA_DIR))
    async with open_fake_engines(path, scorer_backend, optimizer_backend, **engine_config) as (
        scorer,
        optimizer,
    ):
        evaluator = CountingEvaluator(Evaluator(scorer, EvaluatorSettings(layout=PromptLayout())))
        summary = await run_optimization(
            spec,
            scorer=scorer,
            optimizer=optimizer,
            run_dir=run_dir,
            evaluator=evaluator,
            resume=resume,
        )
    return summary, evaluator, scorer_backend, optimizer_backend


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def test_steps_follow_the_training_size() -> None:
    assert steps_per_epoch(48, 8) == 6  # BBH: 6 per epoch, 18 over 3 epochs
    assert total_steps(OptimizerConfig(), 48) == 18
    assert steps_per_epoch(20, 8) == 3  # remainder 4 >= 8 / 2 adds a step
    assert steps_per_epoch(19, 8) == 2
    assert total_steps(OptimizerConfig(steps=5), 48) == 5


def test_format_examples_are_drawn_once_and_seeded() -> None:
    first = draw_format_indices(0, (48, 48, 144), 5, 3)
    assert first == draw_format_indices(0, (48, 48, 144), 5, 3)
    assert len(set(first)) == 3 and first == sorted(first)
    assert draw_format_indices(0, (48, 48, 144), 2, 3) == [0, 1]


async def test_two_step_gpo_run_pays_each_meta_prompt_once_and_scores_a_step_in_one_call(
    tmp_path: Path,
) -> None:
    config = config_for_method("gpo", **SMALL)
    summary, evaluator, _, optimizer = await optimize(tmp_path / "run", config)
    (result,) = summary["tasks"]
    assert result["status"] == "finished"
    assert result["steps_done"] == result["steps_total"] == 2
    # One optimizer request per step, carrying n = 4 (the meta-prompt is paid for once).
    assert [call[1] for call in optimizer.calls] == [4, 4]
    assert all(call[2] == 1.0 for call in optimizer.calls)
    # Dev: the initial prompt, then each step's new candidates in ONE call; then one test call.
    dev_calls = [n for split, n in evaluator.calls if split == "eval"]
    assert dev_calls[0] == 1 and len(dev_calls) == 3 and all(n >= 1 for n in dev_calls)
    assert [split for split, _ in evaluator.calls].count("test") == 1
    trajectory = result["trajectory"]
    assert len(trajectory) == 3
    best = max(trajectory, key=lambda entry: entry["dev_score"])
    assert result["final_prompt"] == best["prompt"]
    assert result["final_dev"] == best["dev_score"]
    assert result["initial_test"] is not None and result["final_test"] is not None
    assert result["word_budgets"] == WordBudgetSchedule().sequence(2) == [30, 10]

    task_dir = tmp_path / "run" / "tasks" / "bbh__navigate"
    meta = read_jsonl(task_dir / "meta_prompts.jsonl")
    assert [row["kind"] for row in meta] == ["update", "update"]
    assert "You are allowed to change up to 30 words in the current prompt." in meta[0]["text"]
    assert len(meta[0]["answers"]) == 4
    candidates = read_jsonl(task_dir / "candidates.jsonl")
    assert sum(row["chosen"] for row in candidates) == 2
    scores = read_jsonl(task_dir / "scores.jsonl")
    assert {row["purpose"] for row in scores} == {"initial", "candidates", "test"}
    assert all("failure" in row and "answers" in row for row in scores)
    assert len(read_jsonl(task_dir / "trajectory.jsonl")) == 3
    ledger = orjson.loads((tmp_path / "run" / "ledger.json").read_bytes())
    phases = {row["phase"] for row in ledger["rows"]}
    assert phases == {"scoring", "optimizing"}
    assert ledger["totals"]["cost_usd"] > 0
    state = orjson.loads((tmp_path / "run" / "state.json").read_bytes())
    assert state["status"] == "finished"
    assert summary["groups"]["final_test"]["bbh"] == result["final_test"]


async def test_without_multiple_choices_each_candidate_is_its_own_single_request(
    tmp_path: Path,
) -> None:
    config = config_for_method("gpo", **SMALL, steps=1)
    _, _, _, optimizer = await optimize(
        tmp_path / "run", config, optimizer_backend=FakeOptimizer(multiple_choices=False)
    )
    assert [call[1] for call in optimizer.calls] == [1, 1, 1, 1]
    seeds = [call[3] for call in optimizer.calls]
    assert len(set(seeds)) == 4  # distinct sample indices: four draws, not one repeated


async def test_runs_are_reproducible_and_the_seed_matters(tmp_path: Path) -> None:
    config = config_for_method("gpo", **SMALL)
    first, *_ = await optimize(tmp_path / "a", config)
    second, *_ = await optimize(tmp_path / "b", config)
    other, *_ = await optimize(tmp_path / "c", config.replace(seed=7))
    assert first["tasks"][0]["trajectory"] == second["tasks"][0]["trajectory"]
    assert first["tasks"][0]["final_test"] == second["tasks"][0]["final_test"]
    prompts = [entry["prompt"] for entry in first["tasks"][0]["trajectory"]]
    other_prompts = [entry["prompt"] for entry in other["tasks"][0]["trajectory"]]
    assert prompts != other_prompts


async def test_apo_reflects_on_the_training_batch_and_edits(tmp_path: Path) -> None:
    config = config_for_method("apo", **SMALL)
    _, evaluator, _, optimizer = await optimize(tmp_path / "run", config)
    train_calls = [n for split, n in evaluator.calls if split == "train"]
    assert train_calls == [1, 1]  # the current prompt on each step's batch
    meta = read_jsonl(tmp_path / "run" / "tasks" / "bbh__navigate" / "meta_prompts.jsonl")
    kinds = [row["kind"] for row in meta]
    assert kinds.count("update") == 2 and kinds.count("reflection") >= 1
    reflection = next(row for row in meta if row["kind"] == "reflection")
    assert "Wrong prediction: I cannot tell." in reflection["text"]
    update = next(row for row in meta if row["kind"] == "update")
    assert update["text"].startswith("Your task is to modify the current prompt")
    assert "Below are the problems with this prompt.\n\n" in update["text"]
    assert "You are allowed to change" not in update["text"]
    assert all(call[2] == 0.0 for call in optimizer.calls if call[1] == 1)


async def test_pe2_shows_recent_prompts_and_a_fixed_budget(tmp_path: Path) -> None:
    config = config_for_method("pe2", **SMALL)
    await optimize(tmp_path / "run", config)
    meta = read_jsonl(tmp_path / "run" / "tasks" / "bbh__navigate" / "meta_prompts.jsonl")
    updates = [row["text"] for row in meta if row["kind"] == "update"]
    assert all("change up to 30 words" in text for text in updates)
    assert "Below are the previous prompts with their scores." in updates[1]


async def test_sgdm_folds_each_steps_problems_into_a_running_summary(tmp_path: Path) -> None:
    config = config_for_method("sgdm", **SMALL)
    summary, *_ = await optimize(tmp_path / "run", config)
    assert summary["tasks"][0]["status"] == "finished"
    meta = read_jsonl(tmp_path / "run" / "tasks" / "bbh__navigate" / "meta_prompts.jsonl")
    kinds = [row["kind"] for row in meta]
    assert kinds.count("momentum") == 1  # from the second step on
    last_update = [row["text"] for row in meta if row["kind"] == "update"][-1]
    assert "It forgets to track steps and to verify the final position." in last_update


async def test_fixed_prompt_baselines_never_call_the_optimizer(tmp_path: Path) -> None:
    summary, evaluator, _, optimizer = await optimize(
        tmp_path / "run", config_for_method("cot", dev_size=8, test_size=8)
    )
    assert optimizer.calls == []
    (result,) = summary["tasks"]
    assert result["final_prompt"] == "Let's think step by step."
    assert result["final_test"] == result["initial_test"] is not None
    assert sorted(split for split, _ in evaluator.calls) == ["eval", "test"]


async def test_a_spent_budget_stops_cleanly_with_everything_saved(tmp_path: Path) -> None:
    config = config_for_method("gpo", **{**SMALL, "epochs": 3})
    summary, *_ = await optimize(tmp_path / "run", config, budget_usd=0.005)
    (result,) = summary["tasks"]
    assert result["status"] == "stopped"
    assert "budget" in result["stop_reason"]
    assert result["steps_done"] < result["steps_total"] == 6
    assert result["final_prompt"]  # the best prompt found so far
    run = tmp_path / "run"
    assert orjson.loads((run / "state.json").read_bytes())["status"] == "stopped"
    assert orjson.loads((run / "summary.json").read_bytes())["status"] == "stopped"
    stored = orjson.loads((run / "tasks" / "bbh__navigate" / "result.json").read_bytes())
    assert stored["status"] == "stopped"
    assert len(read_jsonl(run / "tasks" / "bbh__navigate" / "trajectory.jsonl")) == (
        result["steps_done"] + 1
    )


async def test_a_group_reports_averages_over_its_tasks(tmp_path: Path) -> None:
    tasks = ("bbh/navigate", "bbh/sports_understanding")
    config = config_for_method("gpo", **SMALL, steps=1)
    summary, *_ = await optimize(tmp_path / "run", config, tasks=tasks)
    finals = [task["final_test"] for task in summary["tasks"]]
    assert summary["groups"]["final_test"]["bbh"] == pytest.approx(sum(finals) / 2)


async def test_summarised_prompts_without_reflection_score_the_summary(tmp_path: Path) -> None:
    config = config_for_method("gpo", **SMALL, direction="summary")
    summary, *_ = await optimize(tmp_path / "run", config)
    meta = read_jsonl(tmp_path / "run" / "tasks" / "bbh__navigate" / "meta_prompts.jsonl")
    assert [row["kind"] for row in meta] == ["update", "summary", "update"]
    first, last = meta[0]["text"], meta[2]["text"]
    # Step 0: the summary starts as the current prompt itself; step 1 shows the merged prompt.
    assert "Below is the previous prompt with its score." in first
    assert "Prompt: Track each step and verify the final position.\nScore: " in last
    scores = read_jsonl(tmp_path / "run" / "tasks" / "bbh__navigate" / "scores.jsonl")
    assert {row["prompt"] for row in scores if row["purpose"] == "summary"} == {
        "Track each step and verify the final position."
    }
    assert summary["tasks"][0]["status"] == "finished"


async def test_opro_shows_the_best_scored_prompts(tmp_path: Path) -> None:
    await optimize(tmp_path / "run", config_for_method("opro", **SMALL))
    task_dir = tmp_path / "run" / "tasks" / "bbh__navigate"
    trajectory = read_jsonl(task_dir / "trajectory.jsonl")
    last_update = [row["text"] for row in read_jsonl(task_dir / "meta_prompts.jsonl")][-1]
    ranked = sorted(trajectory[:2], key=lambda row: row["dev_score"], reverse=True)
    lines = last_update.splitlines()
    shown = [line.removeprefix("Prompt: ") for line in lines if line.startswith("Prompt: ")]
    assert shown == [row["prompt"] for row in ranked]
    assert "You are allowed to change" not in last_update


class RefusingScorer(FakeScorer):
    """Refuses (HTTP 400) questions that start with one of `refused` when the prompt is CoT."""

    def __init__(self, refused: tuple[str, ...]) -> None:
        super().__init__()
        self.refused = refused

    async def chat(self, messages, params):  # type: ignore[no-untyped-def]
        content = messages[0][1]
        if content.endswith("Let's think step by step.") and content.startswith(self.refused):
            raise ClientRequestError("HTTP 400: refused", endpoint="fake://scorer", status=400)
        return await super().chat(messages, params)


async def test_failed_samples_are_left_out_of_the_mean(tmp_path: Path, caplog) -> None:
    first_question = load_task("bbh/navigate", DATA_DIR).split("eval")[0].input
    config = config_for_method("gpo", **SMALL, steps=1)
    summary, *_ = await optimize(
        tmp_path / "run", config, scorer_backend=RefusingScorer((first_question,))
    )
    scores = read_jsonl(tmp_path / "run" / "tasks" / "bbh__navigate" / "scores.jsonl")
    initial = [row for row in scores if row["purpose"] == "initial"]
    assert sum(row["failure"] is not None for row in initial) == 1
    answered = [row["score"] for row in initial if row["failure"] is None]
    assert summary["tasks"][0]["initial_dev"] == pytest.approx(sum(answered) / len(answered))
    assert "1 of 8 eval samples failed" in caplog.text


async def test_a_prompt_with_no_scored_sample_stops_the_run_resumably(tmp_path: Path) -> None:
    config = config_for_method("gpo", **SMALL, steps=1)
    with pytest.raises(ScoringFailed, match="no eval sample of a prompt could be scored"):
        await optimize(tmp_path / "run", config, scorer_backend=RefusingScorer(("",)))
    state = orjson.loads((tmp_path / "run" / "state.json").read_bytes())
    assert state["status"] == "failed" and "ScoringFailed" in state["error"]
