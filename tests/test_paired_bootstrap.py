"""The paired bootstrap on synthetic scores: identical arrays, a large gap, coverage of the
true difference, reproducibility, and the inputs it refuses."""

from __future__ import annotations

import numpy as np
import pytest

from gpo.paired_bootstrap import (
    PairedDifference,
    paired_bootstrap,
    resampled_means,
    stratified_paired_bootstrap,
)


def test_identical_arrays_give_exactly_zero() -> None:
    scores = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.5] * 8)
    difference = paired_bootstrap(scores, scores.copy())
    assert (difference.mean, difference.low, difference.high) == (0.0, 0.0, 0.0)
    assert difference.n_shared == 48
    assert not difference.excludes_zero


def test_large_gap_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    baseline = (rng.random(40) < 0.25).astype(float)
    better = (rng.random(40) < 0.85).astype(float)
    difference = paired_bootstrap(baseline, better)
    assert difference.mean == pytest.approx(better.mean() - baseline.mean())
    assert 0.0 < difference.low < difference.mean < difference.high
    assert difference.excludes_zero
    # Swapping the two negates the difference: the interval is then wholly below 0.
    reverse = paired_bootstrap(better, baseline)
    assert reverse.high < 0.0 and reverse.excludes_zero


def test_small_gap_on_few_samples_contains_zero() -> None:
    """Two prompts that disagree on a few of 48 samples, in both directions: noise."""
    baseline = np.array([1.0] * 30 + [0.0] * 18)
    other = baseline.copy()
    other[[0, 1, 2]] = 0.0  # three samples lost
    other[[30, 31, 32, 33]] = 1.0  # four won: +2 points, as the paper's GPO-vs-PE2 gap
    difference = paired_bootstrap(baseline, other)
    assert difference.mean == pytest.approx(1 / 48)
    assert difference.low < 0.0 < difference.high
    assert not difference.excludes_zero


def test_coverage_of_the_true_difference_is_near_the_level() -> None:
    """Over 300 simulated pairs of runs with a known difference of 0.1, the 95% interval holds
    it in roughly 95% of them (a percentile bootstrap on n=80 is a little narrow; the bounds
    leave room for that and for the 300 draws' own noise)."""
    rng = np.random.default_rng(2026)
    hits = 0
    trials = 300
    for trial in range(trials):
        ease = rng.random(80)  # per-sample difficulty, shared by both prompts (pairing)
        draw = rng.random(80)
        baseline = (draw < 0.4 + 0.5 * (ease - 0.5)).astype(float)
        other = (draw < 0.5 + 0.5 * (ease - 0.5)).astype(float)
        difference = paired_bootstrap(baseline, other, resamples=2000, seed=trial)
        hits += difference.low <= 0.1 <= difference.high
    assert 0.88 <= hits / trials <= 0.99


def test_fixed_seed_reproduces_and_another_seed_moves_the_bounds_only_slightly() -> None:
    rng = np.random.default_rng(3)
    baseline = (rng.random(60) < 0.5).astype(float)
    other = (rng.random(60) < 0.6).astype(float)
    first = paired_bootstrap(baseline, other, seed=7)
    assert paired_bootstrap(baseline, other, seed=7) == first
    moved = paired_bootstrap(baseline, other, seed=8)
    assert moved.mean == first.mean
    assert abs(moved.low - first.low) < 0.03 and abs(moved.high - first.high) < 0.03
    assert (moved.resamples, moved.seed, moved.confidence) == (10_000, 8, 0.95)


def test_wider_confidence_gives_a_wider_interval() -> None:
    rng = np.random.default_rng(4)
    baseline, other = rng.random(50), rng.random(50)
    narrow = paired_bootstrap(baseline, other, confidence=0.8)
    wide = paired_bootstrap(baseline, other, confidence=0.99)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_large_samples_are_resampled_in_bounded_chunks() -> None:
    values = np.random.default_rng(5).random(50_000)
    means = resampled_means(values, 300, np.random.default_rng(0))
    assert means.shape == (300,)
    assert abs(means.mean() - values.mean()) < 0.01


@pytest.mark.parametrize(
    ("baseline", "other", "options", "message"),
    [
        ([1.0, 0.0], [1.0], {}, "aligned"),
        ([], [], {}, "no shared samples"),
        ([1.0, float("nan")], [1.0, 0.0], {}, "NaN"),
        ([1.0, 0.0], [1.0, 1.0], {"resamples": 0}, "resamples"),
        ([1.0, 0.0], [1.0, 1.0], {"confidence": 1.0}, "confidence"),
    ],
)
def test_bad_inputs_are_refused(baseline, other, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        paired_bootstrap(baseline, other, **options)


def test_to_json_carries_the_flag() -> None:
    difference = PairedDifference(mean=0.2, low=0.05, high=0.35, n_shared=40)
    data = difference.to_json()
    assert data["excludes_zero"] is True and data["n_shared"] == 40


def test_stratified_over_tasks_weighs_each_task_the_same() -> None:
    rng = np.random.default_rng(6)
    small = (np.zeros(10), np.ones(10))  # +1.0 on a task of 10 samples
    large = ((rng.random(200) < 0.5).astype(float),) * 2  # 0 on a task of 200
    difference = stratified_paired_bootstrap([small, large])
    assert difference.mean == pytest.approx(0.5)  # not 10/210: tasks weigh the same
    assert difference.n_shared == 210
    assert difference.low == pytest.approx(0.5) and difference.high == pytest.approx(0.5)
    same = stratified_paired_bootstrap([large, large])
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)


def test_stratified_interval_of_one_task_matches_the_paired_one_in_distribution() -> None:
    rng = np.random.default_rng(7)
    baseline = (rng.random(60) < 0.4).astype(float)
    other = (rng.random(60) < 0.7).astype(float)
    alone = paired_bootstrap(baseline, other)
    stratified = stratified_paired_bootstrap([(baseline, other)])
    assert stratified.mean == alone.mean
    assert abs(stratified.low - alone.low) < 0.03 and abs(stratified.high - alone.high) < 0.03
    with pytest.raises(ValueError, match="no shared samples"):
        stratified_paired_bootstrap([])
