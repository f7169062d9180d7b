"""Every numeric flag of every `gpo` subcommand has a lower and an upper bound: a value outside is
a usage error naming the flag and the allowed range, before any work (`--steps
99999999999999999999 --dry-run` used to spin without end). The dry-run estimate itself does
bounded work whatever the number of steps."""

from __future__ import annotations

import argparse
import math

import pytest

import gpo.cost_estimate
from benchmarks import load_task
from gpo.cli import build_parser
from gpo.cost_estimate import MAX_SUMMED_STEPS, estimate_optimization_cost
from gpo.endpoints import BoundedNumber
from tests.gpo_fakes import DATA_DIR
from tests.gpo_process import TASK, run_gpo

NEEDS = {"report": ["RUN_DIR"], "compare": ["RUN_A", "RUN_B"]}  # positional arguments a subcommand needs to parse


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    root = build_parser()
    (subparsers,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def _numeric_flags() -> list[tuple[str, str, argparse.Action]]:
    """(subcommand, flag, action) for every flag whose value or default is a number."""
    found = []
    for command, parser in _subcommands().items():
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0:
                continue
            default = action.default
            numeric_default = isinstance(default, (int, float)) and not isinstance(default, bool)
            numeric_type = action.type in (int, float) or isinstance(action.type, BoundedNumber)
            if numeric_type or numeric_default:
                found.append((command, action.option_strings[-1], action))
    return found


NUMERIC = _numeric_flags()
IDS = [f"{command} {flag}" for command, flag, _ in NUMERIC]


def test_the_subcommands_have_numeric_flags() -> None:
    commands = {command for command, _, _ in NUMERIC}
    assert {"optimize", "eval", "serve"} <= commands
    assert len(NUMERIC) > 40


@pytest.mark.parametrize(("command", "flag", "action"), NUMERIC, ids=IDS)
def test_every_numeric_flag_is_bounded(command, flag, action) -> None:
    assert isinstance(action.type, BoundedNumber), f"gpo {command} {flag} has no bounds"
    assert math.isfinite(action.type.maximum) and action.type.maximum >= action.type.minimum


def _parse_error(command: str, flag: str, value: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, *NEEDS.get(command, []), f"{flag}={value}"])
    assert exit_.value.code == 2
    return capsys.readouterr().err


def _bounds(action: argparse.Action) -> BoundedNumber:
    bounded = action.type
    if not isinstance(bounded, BoundedNumber):
        pytest.fail(f"{action.option_strings[-1]} has no bounds")
    return bounded


@pytest.mark.parametrize(("command", "flag", "action"), NUMERIC, ids=IDS)
def test_out_of_range_values_are_refused_naming_flag_and_range(
    command, flag, action, capsys
) -> None:
    bounds = _bounds(action)
    too_big = "9" * 25
    below = str(bounds.minimum - 1) if bounds.inclusive else str(bounds.minimum)
    tests = [too_big, below] + (["nan", "inf", "-inf"] if bounds.kind is float else ["1.5"])
    for value in tests:
        error = _parse_error(command, flag, value, capsys)
        assert f"argument {flag}:" in error, value
        assert f"(allowed: {bounds.allowed})" in error, value


@pytest.mark.parametrize(("command", "flag", "action"), NUMERIC, ids=IDS)
def test_in_range_values_are_accepted(command, flag, action) -> None:
    bounds = _bounds(action)
    dest = action.dest
    for value in (bounds.maximum, bounds.minimum if bounds.inclusive else bounds.minimum + 1):
        text = str(int(value)) if bounds.kind is int else repr(float(value))
        args = build_parser().parse_args([command, *NEEDS.get(command, []), f"{flag}={text}"])
        assert getattr(args, dest) == bounds.kind(text)


def test_an_absurd_step_count_is_a_usage_error_not_a_hang() -> None:
    done = run_gpo("optimize", "--task", TASK, "--steps", "9" * 20, "--dry-run", timeout=120)
    assert done.returncode == 2
    assert "argument --steps:" in done.stderr and "allowed: from 1 to 10,000" in done.stderr
    assert "Traceback" not in done.stderr


def test_epochs_that_multiply_into_too_many_steps_are_refused() -> None:
    done = run_gpo(
        "optimize",
        *("--task", TASK, "--epochs", "1000", "--train-batch-size", "1", "--dry-run"),
        timeout=120,
    )
    assert done.returncode == 2
    assert "optimization steps (allowed: 1 to 10,000)" in done.stderr
    assert "--epochs" in done.stderr and "Traceback" not in done.stderr


def test_eval_refuses_an_absurd_limit_before_calling_any_server() -> None:
    done = run_gpo(
        "eval",
        *("--task", TASK, "--limit", "99999999999", "--scorer-url", "http://127.0.0.1:9/v1"),
        timeout=120,
    )
    assert done.returncode == 2
    assert "argument --limit:" in done.stderr and "allowed: from 1 to 10,000,000" in done.stderr


def test_a_dry_run_estimate_does_bounded_work_for_any_step_count(monkeypatch) -> None:
    rendered = 0
    render = gpo.cost_estimate.render_update_prompt

    def counting_render(**kwargs):
        nonlocal rendered
        rendered += 1
        if rendered > 4 * MAX_SUMMED_STEPS:
            raise AssertionError("the estimate renders a meta-prompt per step")
        return render(**kwargs)

    monkeypatch.setattr(gpo.cost_estimate, "render_update_prompt", counting_render)
    task = load_task(TASK, DATA_DIR)
    small = estimate_optimization_cost(task, steps=100, candidates=2, dev_size=2, test_size=2)
    huge = estimate_optimization_cost(task, steps=10**12, candidates=2, dev_size=2, test_size=2)
    assert huge.optimizer_calls == 10**12
    assert huge.scorer_calls == 2 * (2 * (1 + 2 * 10**12) + 2 * 2)
    # Past the word budget's decay the meta-prompts are alike: about the same tokens per step.
    per_step = small.optimizer_prompt_tokens / 100
    assert huge.optimizer_prompt_tokens == pytest.approx(per_step * 10**12, rel=0.05)
