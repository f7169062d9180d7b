"""From `gpo optimize` flags to the loop's configuration: presets, overrides and ablations."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from rich.console import Console

from backends.errors import ConfigError
from gpo.optimize_args import build_optimize_parser, optimizer_config_from_args, spec_from_args
from gpo.progress_display import ProgressDisplay
from gpo.progress_tracker import ProgressTracker, WorkPlan
from gpo.resume import resumed_arguments, stored_arguments
from gpo.schedules import WordBudgetSchedule
from tests.gpo_fakes import DATA_DIR


def parse(*flags: str) -> argparse.Namespace:
    return build_optimize_parser().parse_args(["--task", "bbh/navigate", *flags])


def test_each_method_is_its_preset() -> None:
    gpo = optimizer_config_from_args(parse())
    assert (gpo.direction, gpo.reflection, gpo.update) == ("relevance", False, "generate")
    assert gpo.schedule == WordBudgetSchedule("cosine", 50, 10)
    pe2 = optimizer_config_from_args(parse("--method", "pe2"))
    assert (pe2.direction, pe2.reflection, pe2.schedule.kind, pe2.schedule.initial) == (
        "recency",
        True,
        "fixed",
        30,
    )
    sgdm = optimizer_config_from_args(parse("--method", "sgdm"))
    assert (sgdm.direction, sgdm.update, sgdm.schedule.kind) == ("summary", "edit", "none")
    empty = optimizer_config_from_args(parse("--method", "empty"))
    assert empty.optimize is False and empty.initial_prompt == ""


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        # Table 2: update direction, with and without reflection.
        (("--direction", "recency"), {"direction": "recency"}),
        (("--direction", "summary", "--reflection"), {"direction": "summary", "reflection": True}),
        (("--direction", "none"), {"direction": "none"}),
        # Table 3: refinement strategy and word-budget schedule.
        (("--update", "edit"), {"update": "edit"}),
        (("--schedule", "linear"), {"schedule": WordBudgetSchedule("linear", 50, 10)}),
        (
            ("--schedule", "fixed", "--warmup-steps", "1"),
            {"schedule": WordBudgetSchedule("fixed", 50, 10, 1)},
        ),
        (("--schedule", "none"), {"schedule": WordBudgetSchedule("none", 50, 10)}),
        (("--relevance-order", "reference"), {"relevance_order": "reference"}),
        (("--trajectory-k", "5", "--seed", "3"), {"trajectory_k": 5, "seed": 3}),
    ],
)
def test_ablations_are_one_flag_on_top_of_gpo(flags: tuple[str, ...], expected: dict) -> None:
    config = optimizer_config_from_args(parse(*flags))
    for field, value in expected.items():
        assert getattr(config, field) == value
    assert config.method == "gpo"


def test_a_decay_switched_on_for_a_method_without_one_starts_from_50_to_10() -> None:
    config = optimizer_config_from_args(parse("--method", "ape", "--schedule", "cosine"))
    assert config.schedule == WordBudgetSchedule("cosine", 50, 10)
    words = optimizer_config_from_args(parse("--method", "pe2", "--words-initial", "20"))
    assert words.schedule == WordBudgetSchedule("fixed", 20, 30)


def test_spec_sizes_and_position_flow_into_scoring_and_meta_prompts() -> None:
    args = parse(
        "--data-dir", str(DATA_DIR), "--position", "Q_begin", "--max-tokens", "64", "--no-test"
    )
    spec = spec_from_args(args)
    assert spec.tasks == ("bbh/navigate",)
    assert spec.scoring.layout.position == "Q_begin"
    assert spec.optimizer.instruction_position == "Q_begin"
    assert spec.scoring.first_turn.max_tokens == 64
    assert spec.optimizer.evaluate_test is False


def test_a_group_expands_to_its_tasks() -> None:
    spec = spec_from_args(parse("--data-dir", str(DATA_DIR), "--task", "lite-bbh"))
    assert set(spec.tasks) >= {"bbh/navigate", "bbh/word_sorting", "bbh/object_counting"}


def test_too_small_a_training_split_asks_for_steps() -> None:
    with pytest.raises(ConfigError, match="--steps"):
        spec_from_args(parse("--data-dir", str(DATA_DIR), "--train-size", "2"))
    spec = spec_from_args(parse("--data-dir", str(DATA_DIR), "--train-size", "2", "--steps", "1"))
    assert spec.optimizer.steps == 1


def test_resumed_arguments_keep_the_run_and_accept_a_new_budget(tmp_path: Path) -> None:
    parser = build_optimize_parser()
    original = parser.parse_args(
        ["--task", "bbh/navigate", "--candidates", "4", "--run-dir", str(tmp_path)]
    )
    stored = stored_arguments(original)
    again = parser.parse_args(["--resume", str(tmp_path), "--budget-usd", "2.5"])
    merged = resumed_arguments(again, stored, parser)
    assert merged.candidates == 4 and merged.task == ["bbh/navigate"]
    assert merged.budget_usd == 2.5
    assert merged.run_dir == tmp_path and isinstance(merged.run_dir, Path)
    clash = parser.parse_args(["--resume", str(tmp_path), "--method", "ape"])
    with pytest.raises(ConfigError, match="--method cannot change"):
        resumed_arguments(clash, stored, parser)


def test_progress_shows_step_best_dev_tokens_dollars_and_eta() -> None:
    class Ledger:
        def snapshot(self) -> dict:
            return {"rows": [], "totals": {"total_tokens": 12345, "cost_usd": 0.5, "requests": 10}}

    class EngineStub:
        ledger = Ledger()

    clock = [0.0]
    tracker = ProgressTracker(
        "optimize", {"bbh/navigate": WorkPlan(8, 40, 18, 16)}, clock=lambda: clock[0]
    )
    tracker.engines = (EngineStub(),)
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    display = ProgressDisplay(tracker, console, "bars")
    with display:
        tracker.task_started("bbh/navigate", 18)
        display.tick()
        tracker.evaluation_started("bbh/navigate", "eval", 8)
        for _ in range(8):
            tracker.item_scored("bbh/navigate")
        tracker.evaluation_finished("bbh/navigate")
        tracker.step_finished("bbh/navigate", 0, 18, 0.5625)
        clock[0] = 10.0
        display.tick()
        display.progress.refresh()
    text = buffer.getvalue()
    assert "bbh/navigate" in text and "step 2/18" in text
    assert "best dev 56.2" in text
    assert "10 calls" in text and "12.3k tokens" in text and "$0.5000" in text
    assert "ETA" in text and "ETA ?" not in text.rsplit("bbh/navigate", 1)[-1]
