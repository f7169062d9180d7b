"""Candidate racing: the anytime-valid test, the race's drops, and racing through a real engine."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from benchmarks import PromptLayout, load_task
from engine.engine import Engine, EngineConfig
from engine.evaluator import Evaluator, EvaluatorSettings
from engine.race_runner import race_prompts
from engine.racing import BettingTest, Race, RacingSettings, racing_order
from tests.gpo_fakes import DATA_DIR, FakeScorer


def run_race(matrix: list[list[float]], settings: RacingSettings) -> tuple[Race, int]:
    """Feed a full score matrix in racing order, as the runner would; return the race and calls."""
    candidates, samples = len(matrix), len(matrix[0])
    order = racing_order(samples, settings.seed)
    race = Race(candidates, samples, settings)
    calls = 0
    for position in range(samples):
        if race.finished:
            break
        for candidate in race.survivors():
            race.record(candidate, position, matrix[candidate][order[position]])
            calls += 1
    if race.finished:
        calls += samples - race.decided_prefix  # the chosen one finishes every sample
    return race, calls


def test_identical_candidates_are_never_dropped() -> None:
    row = [1.0, 0.0] * 24
    race, calls = run_race([row[:] for _ in range(4)], RacingSettings())
    assert race.survivors() == [0, 1, 2, 3]
    assert calls == 4 * 48


def test_clearly_worse_candidates_are_dropped_and_the_best_is_chosen() -> None:
    rng = random.Random(3)
    accuracies = [0.9, 0.05, 0.1, 0.0, 0.1, 0.05, 0.15, 0.1]
    matrix = [[1.0 if rng.random() < a else 0.0 for _ in range(48)] for a in accuracies]
    race, calls = run_race(matrix, RacingSettings(seed=1))
    best = int(np.argmax([sum(row) for row in matrix]))
    assert race.leader() == best
    assert set(race.dropped_at) == set(range(8)) - {best}
    assert calls < 0.6 * 8 * 48
    mean, answered = race.partial_mean(next(iter(race.dropped_at)))
    assert 0 < answered < 48 and 0.0 <= mean <= 1.0


def test_a_candidate_that_cannot_catch_up_is_dropped_without_a_bet() -> None:
    test = BettingTest(population=10, null_mean=0.5, alpha=1e-12)  # bets can never reach 1/alpha
    for _ in range(5):
        assert not test.rejected
        test.update(1.0)
    test.update(1.0)  # 6 of 10 at 1.0: the population mean is above 0.5 whatever comes next
    assert test.rejected


def test_the_best_is_kept_at_least_one_minus_delta_of_the_time_under_the_hardest_null() -> None:
    """Equal-skill candidates: the full-dev best may only be dropped with probability <= delta."""
    rng = random.Random(7)
    wrong = 0
    trials = 300
    for trial in range(trials):
        matrix = [[1.0 if rng.random() < 0.5 else 0.0 for _ in range(48)] for _ in range(8)]
        race, _ = run_race(matrix, RacingSettings(seed=trial, delta=0.05))
        means = [sum(row) / 48 for row in matrix]
        if max(means) - means[race.leader()] > 1 / 48 + 1e-12:
            wrong += 1
    assert wrong <= 0.05 * trials


def test_racing_order_is_a_seeded_permutation() -> None:
    assert sorted(racing_order(48, 5)) == list(range(48))
    assert racing_order(48, 5) == racing_order(48, 5)
    assert racing_order(48, 5) != racing_order(48, 6)


def test_failed_scores_are_skipped_not_counted_as_zero() -> None:
    race = Race(2, 4, RacingSettings())
    for position in range(4):
        race.record(0, position, math.nan)
        race.record(1, position, 0.0)
    assert race.survivors() == [0, 1]


@pytest.mark.asyncio
async def test_racing_through_the_engine_picks_the_full_evaluations_choice() -> None:
    task = load_task("bbh/navigate", DATA_DIR)
    prompts = [
        "Let's think step by step about where the walker ends up and answer carefully.",
        "",
        "Say anything.",
        "Answer Yes or No after reasoning step by step carefully.",
    ]
    engine = Engine(FakeScorer(), EngineConfig(max_concurrency=16))
    evaluator = Evaluator(engine, EvaluatorSettings(layout=PromptLayout()))
    full = await evaluator.evaluate(task, prompts, "eval")
    raced, outcome = await race_prompts(evaluator, task, prompts, "eval", RacingSettings(seed=2))
    await engine.close()
    best = int(np.argmax(full.mean_scores))
    assert outcome.chosen == best or (
        full.mean_scores[best] - full.mean_scores[outcome.chosen] <= outcome.epsilon
    )
    chosen_row = raced.scores[outcome.chosen]
    assert not np.isnan(chosen_row).any()  # the chosen prompt has a full-dev score
    assert raced.mean_scores[outcome.chosen] == pytest.approx(full.mean_scores[outcome.chosen])
    assert outcome.chains_scored == len(raced.records)
    assert outcome.chains_scored == int((~np.isnan(raced.scores)).sum())
    for dropped in outcome.dropped_at:
        assert np.isnan(raced.scores[dropped]).any()
