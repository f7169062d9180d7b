"""Meta-prompts render exactly as GPO.md lays them out (golden texts)."""

# ruff: noqa: E501  (golden texts keep the meta-prompts' own long lines)

from __future__ import annotations

import pytest

from backends.errors import ConfigError
from gpo.meta_prompts import (
    FormatExample,
    WrongExample,
    format_score,
    render_problem_integration_prompt,
    render_prompt_summary_prompt,
    render_reflection_prompt,
    render_update_prompt,
)
from gpo.trajectory import TrajectoryEntry

EXAMPLES = [FormatExample("Is 2 even?", "Yes"), FormatExample("Is 3 even?", "No")]
CURRENT = TrajectoryEntry(2, "Think carefully.", 0.5208333333333334)
SHOWN = [
    TrajectoryEntry(0, "Solve it.", 0.25),
    TrajectoryEntry(1, "Let's think step by step.", 0.4375),
    CURRENT,
]
EXPLAIN = (
    "The following exemplars show how to apply the prompt: you replace <Prompt> in each input "
    "with your new prompt, then read the input and give an output. We say your output is wrong "
    "if it is different from the given output, and we say your output is correct if they are "
    "the same."
)

GPO_Q_END = f"""Your task is to write a prompt to replace <Prompt>.

Below are the previous prompts with their scores. The score ranges from 0 to 100, and higher scores indicate better quality.

Prompt: Solve it.
Score: 25

Prompt: Let's think step by step.
Score: 44

Prompt: Think carefully.
Score: 52

The current prompt is:
Think carefully.

{EXPLAIN}

Input:
Is 2 even?
<Prompt>
Output:
Yes

Input:
Is 3 even?
<Prompt>
Output:
No

Carefully analyze the previous prompts and their scores, and write a new improved prompt to replace <Prompt> at the end of the question in the task examples.
You are allowed to change up to 42 words in the current prompt.

Wrap the new prompt with <START> and <END>."""


def test_gpo_generation_meta_prompt_q_end_golden() -> None:
    text = render_update_prompt(
        style="generate",
        current=CURRENT,
        examples=EXAMPLES,
        position="Q_end",
        shown=SHOWN,
        word_budget=42,
    )
    assert text == GPO_Q_END


def test_q_begin_puts_the_placeholder_before_the_question() -> None:
    text = render_update_prompt(
        style="generate", current=CURRENT, examples=EXAMPLES[:1], position="Q_begin", shown=SHOWN
    )
    assert "Input:\n<Prompt>\nIs 2 even?\nOutput:\nYes" in text
    assert text.endswith(
        "to replace <Prompt> at the beginning of the question in the task examples.\n"
        "Wrap the new prompt with <START> and <END>."
    )


def test_a_begin_example_reads_q_then_a_placeholder() -> None:
    text = render_update_prompt(
        style="generate", current=CURRENT, examples=EXAMPLES[:1], position="A_begin", shown=SHOWN
    )
    assert "Input:\nQ: Is 2 even?\nA: <Prompt>\nOutput:\nYes" in text
    assert "to replace <Prompt> at the beginning of the answer in the task examples." in text


APO_EDIT_NO_TRAJECTORY = f"""Your task is to modify the current prompt to replace <Prompt>.

Below is the current prompt with its score. The score ranges from 0 to 100, and higher score indicates better quality.
Prompt: Think carefully.
Score: 52

The current prompt is:
Think carefully.

Below are the problems with this prompt.

It ignores the options.

{EXPLAIN}

Input:
Is 2 even?
<Prompt>
Output:
Yes

Modify the current prompt, and get a new improved prompt to replace <Prompt> at the end of the question in the task examples.
Wrap the new prompt with <START> and <END>."""


def test_editing_variant_without_trajectory_with_problems_golden() -> None:
    text = render_update_prompt(
        style="edit",
        current=CURRENT,
        examples=EXAMPLES[:1],
        position="Q_end",
        problems="It ignores the options.",
    )
    assert text == APO_EDIT_NO_TRAJECTORY


def test_editing_variant_with_trajectory_says_modify() -> None:
    text = render_update_prompt(
        style="edit", current=CURRENT, examples=EXAMPLES[:1], position="Q_end", shown=SHOWN
    )
    assert text.startswith("Your task is to modify the current prompt to replace <Prompt>.\n\n")
    assert (
        "Carefully analyze the previous prompts and their scores, and modify the current "
        "prompt, and get a new improved prompt to replace <Prompt> at the end of the question"
    ) in text


def test_summary_momentum_shows_the_previous_prompt_with_its_score() -> None:
    text = render_update_prompt(
        style="generate",
        current=CURRENT,
        examples=EXAMPLES[:1],
        position="Q_end",
        previous_summary=TrajectoryEntry(1, "Summarised prompt.", 0.5),
    )
    assert (
        "Below is the previous prompt with its score. The score ranges from 0 to 100, and "
        "higher score indicates better quality.\nPrompt: Summarised prompt.\nScore: 50\n\n"
        "The current prompt is:\nThink carefully.\n\n"
    ) in text
    assert "Carefully analyze the previous prompt and its score, and write a new improved" in text


def test_raw_score_scale_prints_the_fraction_like_the_reference() -> None:
    assert format_score(0.5208333333333334, "raw") == "0.5208333333333334"
    assert format_score(0.5208333333333334, "percent") == "52"
    text = render_update_prompt(
        style="generate",
        current=CURRENT,
        examples=EXAMPLES[:1],
        position="Q_end",
        shown=SHOWN,
        score_scale="raw",
    )
    assert "Prompt: Think carefully.\nScore: 0.5208333333333334\n\n" in text


def test_unknown_position_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--position"):
        render_update_prompt(
            style="generate",
            current=CURRENT,
            examples=EXAMPLES,
            position="middle",  # type: ignore[arg-type]
        )


REFLECTION = """Your task is to point out the problems with the current prompt based on the wrong examples.

The current prompt is:
Think carefully.

But this prompt gets the following examples wrong.
You should analyze the differences between wrong predictions and ground truth answers, and carefully consider why this prompt led to incorrect predictions.

Below are the task examples with Question, Wrong prediction, and Ground truth answer.

Question: Is 2 even?
Wrong prediction: No
Ground truth answer: Yes

Question: Is 3 even?
Wrong prediction: Yes
Ground truth answer: No

Give a reason why the prompt could have gotten these examples wrong.
Wrap the reason with <START> and <END>."""


def test_reflection_prompt_golden() -> None:
    wrong = [WrongExample("Is 2 even?", "No", "Yes"), WrongExample("Is 3 even?", "Yes", "No")]
    assert render_reflection_prompt("Think carefully.", wrong) == REFLECTION


def test_momentum_prompts_wrap_their_answers() -> None:
    integration = render_problem_integration_prompt("old problems", "new problems")
    assert integration.startswith(
        "Your task is to integrate the problems in the previous prompt and the current prompt."
    )
    assert "previous prompts.\nold problems\n\n" in integration
    assert "current prompt.\nnew problems\n\n" in integration
    assert integration.endswith("Wrap the integrated problems with <START> and <END>.")
    summary = render_prompt_summary_prompt(
        TrajectoryEntry(0, "Old.", 0.25), TrajectoryEntry(1, "New.", 0.75)
    )
    assert "Prompt: Old.\nScore: 25\n\n" in summary
    assert "Prompt: New.\nScore: 75\n\n" in summary
    assert summary.endswith("Wrap the created prompt with <START> and <END>.")
