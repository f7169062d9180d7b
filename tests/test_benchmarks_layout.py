"""Prompt layout: instruction positions, Q:/A: markers, chat vs completion, and demonstrations."""

from __future__ import annotations

import pytest

from backends.errors import ConfigError
from benchmarks import PromptLayout, Sample, build_prompt

QUESTION = Sample("test-0", "Is 7 prime?\nOptions:\n- Yes\n- No", "Yes")
DEMOS = (
    Sample("few_shot_examples-0", "Is 4 prime?", "No"),
    Sample("few_shot_examples-1", "Is 5 prime?", "Yes"),
)
STEP = "Let's think step by step."
Q = QUESTION.input


def user_turn(instruction: str, layout: PromptLayout) -> str:
    messages = build_prompt(instruction, QUESTION, layout)
    assert isinstance(messages, tuple)
    assert messages[-1][0] == "user"
    return messages[-1][1]


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (PromptLayout(), f"{Q}\n{STEP}"),
        (PromptLayout("Q_begin"), f"{STEP}\n{Q}"),
        (PromptLayout("Q_end", qa_markers=True), f"Q: {Q}\n{STEP}\nA:"),
        (PromptLayout("Q_begin", qa_markers=True), f"Q: {STEP}\n{Q}\nA:"),
        (PromptLayout("A_begin"), f"Q: {Q}\nA: {STEP}"),
        (PromptLayout("A_begin", qa_markers=True), f"Q: {Q}\nA: {STEP}"),
        (PromptLayout("before_Q"), Q),
        (PromptLayout("before_Q", qa_markers=True), f"Q: {Q}\nA:"),
    ],
)
def test_chat_user_turn_per_position(layout: PromptLayout, expected: str) -> None:
    assert user_turn(STEP, layout) == expected


def test_default_is_the_papers_single_user_turn() -> None:
    assert build_prompt(STEP, QUESTION, PromptLayout()) == (("user", f"{Q}\n{STEP}"),)


def test_before_q_puts_the_instruction_in_a_system_turn() -> None:
    messages = build_prompt(STEP, QUESTION, PromptLayout("before_Q"))
    assert messages == (("system", STEP), ("user", Q))


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (PromptLayout(), Q),
        (PromptLayout("Q_begin"), Q),
        (PromptLayout("Q_end", qa_markers=True), f"Q: {Q}\nA:"),
        (PromptLayout("Q_begin", qa_markers=True), f"Q: {Q}\nA:"),
        (PromptLayout("A_begin"), f"Q: {Q}\nA:"),
        (PromptLayout("before_Q"), Q),
    ],
)
def test_empty_instruction_leaves_no_dangling_lines(layout: PromptLayout, expected: str) -> None:
    for empty in ("", "   "):
        assert user_turn(empty, layout) == expected
        messages = build_prompt(empty, QUESTION, layout)
        assert all(role != "system" for role, _ in messages)
        as_completion = PromptLayout(layout.position, layout.qa_markers, chat=False)
        assert build_prompt(empty, QUESTION, as_completion) == expected


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        (PromptLayout(chat=False), f"{Q}\n{STEP}"),
        (PromptLayout("Q_begin", chat=False), f"{STEP}\n{Q}"),
        (PromptLayout("before_Q", chat=False), f"{STEP}\n{Q}"),
        (PromptLayout("before_Q", qa_markers=True, chat=False), f"{STEP}\nQ: {Q}\nA:"),
        (PromptLayout("A_begin", chat=False), f"Q: {Q}\nA: {STEP}"),
    ],
)
def test_completion_prompt_per_position(layout: PromptLayout, expected: str) -> None:
    assert build_prompt(STEP, QUESTION, layout) == expected


def test_chat_demonstrations_are_earlier_turns() -> None:
    messages = build_prompt(STEP, QUESTION, PromptLayout(shots=2), DEMOS)
    assert messages == (
        ("user", f"Is 4 prime?\n{STEP}"),
        ("assistant", "No"),
        ("user", f"Is 5 prime?\n{STEP}"),
        ("assistant", "Yes"),
        ("user", f"{Q}\n{STEP}"),
    )


def test_chat_demonstrations_follow_the_system_turn() -> None:
    messages = build_prompt(STEP, QUESTION, PromptLayout("before_Q", shots=1), DEMOS)
    assert messages == (
        ("system", STEP),
        ("user", "Is 4 prime?"),
        ("assistant", "No"),
        ("user", Q),
    )


def test_completion_demonstrations_are_prepended_blocks() -> None:
    with_markers = build_prompt(
        STEP, QUESTION, PromptLayout(qa_markers=True, chat=False, shots=2), DEMOS
    )
    assert with_markers == (
        f"Q: Is 4 prime?\n{STEP}\nA: No\n\nQ: Is 5 prime?\n{STEP}\nA: Yes\n\nQ: {Q}\n{STEP}\nA:"
    )
    plain = build_prompt("", QUESTION, PromptLayout(chat=False, shots=1), DEMOS)
    assert plain == f"Is 4 prime?\nNo\n\n{Q}"


def test_only_the_first_k_demonstrations_are_used() -> None:
    messages = build_prompt(STEP, QUESTION, PromptLayout(shots=1), DEMOS)
    assert len(messages) == 3
    assert build_prompt(STEP, QUESTION, PromptLayout(), DEMOS) == (("user", f"{Q}\n{STEP}"),)


def test_too_few_demonstrations_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="asks for 3 demonstrations but only 2"):
        build_prompt(STEP, QUESTION, PromptLayout(shots=3), DEMOS)


def test_invalid_layouts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="Q_end, Q_begin, before_Q, A_begin"):
        PromptLayout("Q_middle")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="shots"):
        PromptLayout(shots=-1)


def test_layout_is_a_frozen_hashable_value() -> None:
    layout = PromptLayout()
    assert layout == PromptLayout("Q_end", qa_markers=False, chat=True, shots=0)
    assert hash(layout) == hash(PromptLayout())
    with pytest.raises(AttributeError):
        layout.shots = 3  # type: ignore[misc]
