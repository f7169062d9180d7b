"""Word-budget schedules match the reference formulas, GPO.md's test vector included."""

from __future__ import annotations

import pytest

from backends.errors import ConfigError
from gpo.schedules import WordBudgetSchedule

COSINE_50_TO_10_OVER_18 = [49, 48, 47, 45, 42, 40, 36, 33, 30, 26, 23, 20, 17, 14, 12, 11, 10, 10]


def test_cosine_50_to_10_over_18_steps_is_the_papers_sequence() -> None:
    schedule = WordBudgetSchedule(kind="cosine", initial=50, final=10)
    assert schedule.sequence(18) == COSINE_50_TO_10_OVER_18


def test_none_gives_no_budget() -> None:
    assert WordBudgetSchedule(kind="none").sequence(4) == [None, None, None, None]


def test_fixed_is_the_initial_budget_every_step() -> None:
    assert WordBudgetSchedule(kind="fixed", initial=30).sequence(5) == [30] * 5


def test_linear_decays_by_a_constant_and_truncates() -> None:
    schedule = WordBudgetSchedule(kind="linear", initial=50, final=10)
    # rate = 40 / 4 = 10 per step: int(50 - 10 * cur)
    assert schedule.sequence(4) == [40, 30, 20, 10]
    # rate = 40 / 3: int(50 - 13.33 * cur)
    assert WordBudgetSchedule(kind="linear", initial=50, final=10).sequence(3) == [36, 23, 10]


def test_warmup_ramps_up_then_follows_the_schedule_over_the_rest() -> None:
    fixed = WordBudgetSchedule(kind="fixed", initial=30, warmup_steps=3)
    assert fixed.sequence(5) == [10, 20, 30, 30, 30]
    cosine = WordBudgetSchedule(kind="cosine", initial=50, final=10, warmup_steps=2)
    # cur=1 < 2: int(50 * 1 / 2); from cur=2 the cosine runs over (cur - 2) / (6 - 2).
    assert cosine.sequence(6) == [25, 50, 44, 30, 15, 10]
    linear = WordBudgetSchedule(kind="linear", initial=50, final=10, warmup_steps=2)
    # rate 40 / 4 = 10: int(50 - 10 * (cur - 2))
    assert linear.sequence(6) == [25, 50, 40, 30, 20, 10]


def test_bad_settings_name_the_flag() -> None:
    with pytest.raises(ConfigError, match="--schedule"):
        WordBudgetSchedule(kind="exponential")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--warmup-steps"):
        WordBudgetSchedule(kind="cosine", warmup_steps=5).budget(5, 5)
    with pytest.raises(ConfigError, match="--words-initial"):
        WordBudgetSchedule(kind="fixed", initial=0)


def test_describe_reads_like_the_papers_table() -> None:
    assert WordBudgetSchedule().describe() == "cosine 50 -> 10"
    assert WordBudgetSchedule(kind="fixed", initial=30).describe() == "fixed 30"
    assert WordBudgetSchedule(kind="none").describe() == "none"
