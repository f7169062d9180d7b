"""Candidate parsing, de-duplication with score reuse, and the selection rules."""

from __future__ import annotations

from gpo.candidates import extract_between_markers, parse_candidates, parse_marked_answer, polish
from gpo.selection import choose_next
from gpo.trajectory import Trajectory, TrajectoryEntry


def test_text_between_markers_is_taken_and_polished() -> None:
    raw = "Sure! Here it is:\n<START> **think** about each option. <END> Hope it helps."
    assert parse_marked_answer(raw) == "Think about each option."


def test_a_missing_marker_means_the_edge_of_the_answer() -> None:
    assert extract_between_markers("no markers at all") == "no markers at all"
    assert extract_between_markers("<START> only a start") == "only a start"
    assert extract_between_markers("only an end <END> tail") == "only an end"
    assert extract_between_markers("<END> before <START> after") == "after"


def test_polish_keeps_single_characters_and_empty_text() -> None:
    assert polish("   ") == ""
    assert polish("a") == "a"
    assert polish("  solve **carefully** ") == "Solve carefully"


def test_duplicates_and_empty_answers_are_dropped_and_known_scores_reused() -> None:
    answers = [
        "<START>Answer briefly.<END>",
        "<START>answer briefly.<END>",  # polishes to the same prompt
        "<START> <END>",
        "<START>Let's think step by step.<END>",
        "<START>Check each option.<END>",
    ]
    known = {"Let's think step by step.": 0.4}
    candidates, dropped = parse_candidates(answers, known)
    assert [c.prompt for c in candidates] == [
        "Answer briefly.",
        "Let's think step by step.",
        "Check each option.",
    ]
    assert dropped == 2
    assert [c.known_score for c in candidates] == [None, 0.4, None]
    assert [c.index for c in candidates] == [0, 3, 4]


def test_next_prompt_is_the_best_not_chosen_before() -> None:
    scored = [("A", 0.5), ("B", 0.7), ("C", 0.7)]
    assert choose_next(scored, already_chosen=set()) == ("B", 0.7)  # earlier wins the tie
    assert choose_next(scored, already_chosen={"B"}) == ("C", 0.7)
    # The trajectory may go down: the best unchosen is taken even when worse than before.
    assert choose_next(scored, already_chosen={"B", "C"}) == ("A", 0.5)
    # Everything chosen before: the best one again.
    assert choose_next(scored, already_chosen={"A", "B", "C"}) == ("B", 0.7)
    assert choose_next([], already_chosen=set()) is None


def test_final_prompt_is_the_best_dev_score_earliest_on_a_tie() -> None:
    trajectory = Trajectory(
        [
            TrajectoryEntry(-1, "init", 0.3),
            TrajectoryEntry(0, "x", 0.6),
            TrajectoryEntry(1, "y", 0.4),
            TrajectoryEntry(2, "z", 0.6),
        ]
    )
    assert trajectory.best().prompt == "x"
    assert trajectory.current.prompt == "z"
    assert trajectory.chosen_prompts() == {"init", "x", "y", "z"}
