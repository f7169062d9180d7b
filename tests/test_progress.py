"""Progress while a run works: the ETA's estimator on synthetic timings, the tracker's plan and
words, the display's line schedule, and a piped `gpo optimize` that prints progress lines with
growing counts (issue 16: a log of the main job shows progress, at least once a minute)."""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from backends.errors import ConfigError
from gpo.config import OptimizerConfig
from gpo.progress_display import (
    DEFAULT_INTERVAL_S,
    PROGRESS_INTERVAL_ENV,
    ProgressDisplay,
    progress_interval,
)
from gpo.progress_eta import RateEstimator, format_count, format_duration
from gpo.progress_tracker import ProgressTracker, WorkPlan, plan_task
from tests.gpo_process import answered_server, gpo_environment, optimize_args, run_gpo

# -- the estimator -------------------------------------------------------------------------------


def feed(estimator: RateEstimator, start: float, seconds: int, rate: float, done: float) -> float:
    """One observation a second for `seconds` at `rate` units/s; the running total returned."""
    for tick in range(1, seconds + 1):
        done += rate
        estimator.observe(start + tick, done)
    return done


def test_eta_is_unknown_until_a_unit_is_done_and_zero_when_nothing_remains() -> None:
    estimator = RateEstimator(tau_s=60)
    assert estimator.rate is None and estimator.eta_s(10) is None
    estimator.observe(0.0, 0)
    estimator.observe(5.0, 0)
    assert estimator.eta_s(10) is None  # time passed, nothing done: no rate to divide by
    assert estimator.eta_s(0) == 0.0


def test_eta_at_a_steady_rate_is_remaining_over_rate() -> None:
    estimator = RateEstimator(tau_s=60)
    estimator.observe(0.0, 0)
    feed(estimator, 0.0, 300, 2.0, 0)
    assert estimator.rate == pytest.approx(2.0)
    assert estimator.eta_s(100) == pytest.approx(50.0)


def test_eta_follows_a_changed_rate_within_a_few_time_constants() -> None:
    estimator = RateEstimator(tau_s=30)
    estimator.observe(0.0, 0)
    done = feed(estimator, 0.0, 300, 4.0, 0)
    feed(estimator, 300.0, 150, 1.0, done)  # five time constants at the new rate
    assert estimator.rate == pytest.approx(1.0, rel=0.05)
    assert estimator.eta_s(60) == pytest.approx(60.0, rel=0.05)


def test_a_pause_with_nothing_done_lowers_the_rate_as_the_waits_ahead_will() -> None:
    """An optimizer phase scores nothing; the rate over the window counts its time: after 60 s
    at 2/s and 60 s idle, with tau 120 s, the weighted rate is
    2 (e^-1/2 - e^-1) / (1 - e^-1), observed coarsely or finely alike."""
    expected = 2 * (math.exp(-0.5) - math.exp(-1)) / (1 - math.exp(-1))
    fine, coarse = RateEstimator(tau_s=120), RateEstimator(tau_s=120)
    fine.observe(0.0, 0)
    coarse.observe(0.0, 0)
    done = feed(fine, 0.0, 60, 2.0, 0)  # 60 s scoring at 2/s
    assert fine.rate == pytest.approx(2.0)
    coarse.observe(60.0, done)
    for second in range(61, 121):  # 60 s waiting on the optimizer
        fine.observe(float(second), done)
    coarse.observe(120.0, done)
    assert fine.rate == pytest.approx(expected) and coarse.rate == pytest.approx(expected)
    assert fine.eta_s(30) == pytest.approx(30 / expected)


def test_durations_and_counts_are_short() -> None:
    assert format_duration(None) == "?"
    assert format_duration(45) == "45s"
    assert format_duration(92) == "1m32s"
    assert format_duration(2 * 3600 + 5 * 60) == "2h05m"
    assert format_count(950) == "950" and format_count(41_200) == "41.2k"


# -- the tracker ---------------------------------------------------------------------------------


@dataclass
class FakeTask:
    name: str = "bbh/fake"
    sizes: tuple[int, int, int] = (16, 8, 10)  # train, eval, test

    def split(self, name: str) -> tuple[int, ...]:
        size = dict(zip(("train", "eval", "test"), self.sizes, strict=True))[name]
        return tuple(range(size))


@dataclass
class FakeResult:
    status: str = "finished"
    steps_done: int = 2
    final_dev: float = 0.5


def test_a_plan_counts_dev_candidates_optimizer_sequences_and_test() -> None:
    config = OptimizerConfig(steps=2, candidates=4, direction="recency", dev_size=8)
    plan = plan_task(config, FakeTask())
    assert plan == WorkPlan(initial=8, per_step=4 * 8 + 4, steps=2, test=2 * 10)
    assert plan.units_from(0) == 8 + 2 * 36 + 20
    assert plan.units_from(1) == 36 + 20
    fixed = plan_task(OptimizerConfig(method="cot", optimize=False), FakeTask())
    assert fixed == WorkPlan(initial=8, per_step=0, steps=0, test=10)


class Ledger:
    def __init__(self) -> None:
        self.requests = 0

    def snapshot(self) -> dict[str, Any]:
        rows = [{"phase": "optimizing", "requests": 4, "cache_hits": 0}]
        totals = {"requests": self.requests, "total_tokens": 41_200, "cost_usd": 0.0}
        return {"rows": rows, "totals": totals}


class Engine:
    def __init__(self) -> None:
        self.ledger = Ledger()


def tracked(clock: list[float]) -> ProgressTracker:
    tracker = ProgressTracker(
        "optimize", {"bbh/fake": WorkPlan(8, 36, 2, 20)}, clock=lambda: clock[0]
    )
    tracker.engines = (Engine(),)
    return tracker


def test_the_tracker_follows_phases_and_remaining_work() -> None:
    clock = [0.0]
    tracker = tracked(clock)
    assert tracker.remaining == 8 + 72 + 20
    tracker.task_started("bbh/fake", 2)
    tracker.evaluation_started("bbh/fake", "eval", 8)
    assert "initial dev 0/8 scored" in tracker.headline()
    for _ in range(8):
        tracker.item_scored("bbh/fake")
    tracker.evaluation_finished("bbh/fake")
    assert tracker.headline() == "step 1/2 · optimizer"
    tracker.evaluation_started("bbh/fake", "eval", 32)
    for _ in range(5):
        tracker.item_scored("bbh/fake")
    assert tracker.headline() == "step 1/2 · dev 5/32 scored"
    assert tracker.remaining == 8 + 72 + 20 - 13
    tracker.evaluation_finished("bbh/fake")
    tracker.step_finished("bbh/fake", 0, 2, 0.5)
    assert tracker.remaining == 36 + 20
    tracker.observe()
    clock[0] = 10.0
    tracker.observe()
    line = tracker.line()
    assert line.startswith("[gpo optimize] step 2/2 · optimizer · ")
    assert "41.2k tokens" in line and "$0.0000" in line and "elapsed 10s" in line
    tracker.task_finished("bbh/fake", FakeResult())
    assert tracker.remaining == 0 and tracker.eta_s() == 0.0


def test_lines_come_at_the_interval_and_at_phase_changes_only() -> None:
    clock = [0.0]
    tracker = tracked(clock)
    stream = io.StringIO()
    display = ProgressDisplay(tracker, Console(file=io.StringIO()), "lines", 30.0, stream)
    display.tick()  # the first line at once
    tracker.task_started("bbh/fake", 2)
    tracker.evaluation_started("bbh/fake", "eval", 8)
    display.tick()  # the initial phase begins: a line
    for second in range(1, 29):
        clock[0] = float(second)
        tracker.item_scored("bbh/fake")
        display.tick()  # within the interval and the same phase: nothing
    assert len(stream.getvalue().splitlines()) == 2
    clock[0] = 31.0
    display.tick()  # the interval has passed
    tracker.evaluation_finished("bbh/fake")
    tracker.step_finished("bbh/fake", 0, 2, 0.5)
    tracker.step_finished("bbh/fake", 1, 2, 0.5)
    tracker.evaluation_started("bbh/fake", "test", 20)
    clock[0] = 32.0
    display.tick()  # the test phase begins: a line
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("[gpo optimize] ") for line in lines)
    assert "test 0/20 scored" in lines[-1]


def test_the_interval_comes_from_the_flag_else_the_environment(monkeypatch) -> None:
    @dataclass
    class Args:
        progress_interval: float | None = None

    monkeypatch.delenv(PROGRESS_INTERVAL_ENV, raising=False)
    assert progress_interval(Args()) == DEFAULT_INTERVAL_S
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "5")
    assert progress_interval(Args()) == 5.0
    assert progress_interval(Args(2.0)) == 2.0
    monkeypatch.setenv(PROGRESS_INTERVAL_ENV, "soon")
    with pytest.raises(ConfigError, match=PROGRESS_INTERVAL_ENV):
        progress_interval(Args())


# -- a piped run ---------------------------------------------------------------------------------

_LINE = re.compile(r"^\[gpo optimize\] .* · (\d[\d.]*k?) calls.* · elapsed \S+ · ETA \S+$")


def _calls(text: str) -> float:
    return float(text[:-1]) * 1000 if text.endswith("k") else float(text)


def test_a_piped_optimization_prints_progress_lines_with_growing_counts(tmp_path: Path) -> None:
    """Real time on the simulated server (a step takes seconds) and a line every half second:
    several lines, their call counts growing, and stdout still one JSON object."""
    with answered_server(1.0) as server:
        arguments = optimize_args(f"{server.url}/v1", tmp_path / "run", steps=2)
        arguments = [a for a in arguments if a != "--no-progress"]
        env = gpo_environment({PROGRESS_INTERVAL_ENV: "0.5"})
        done = run_gpo(*arguments, "--json", env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("[gpo optimize]")]
    assert len(lines) >= 2, done.stderr
    assert all(_LINE.match(line) for line in lines), lines
    calls = [_calls(_LINE.match(line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert calls == sorted(calls) and calls[-1] > calls[0], lines
    assert any("dev" in line and "scored" in line for line in lines), lines
    assert orjson.loads(done.stdout)["status"] == "finished"


def test_several_cells_show_how_many_are_done_and_the_first_running_one() -> None:
    plans = {"gpo t seed 0": WorkPlan(8, 36, 2, 20), "ape t seed 0": WorkPlan(8, 36, 2, 20)}
    tracker = ProgressTracker("reproduce", plans)
    tracker.task_started("gpo t seed 0", 2)
    tracker.task_started("ape t seed 0", 2)
    tracker.step_finished("gpo t seed 0", 0, 2, 0.5)
    tracker.evaluation_started("gpo t seed 0", "eval", 32)
    tracker.task_finished("ape t seed 0", FakeResult())
    headline = tracker.headline()
    assert headline == "cells 1/2 done · steps 3/4 · gpo t seed 0: step 2/2 · dev 0/32 scored"
    assert tracker.remaining == 36 + 20
