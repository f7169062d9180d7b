"""The texts GPO and its baselines send to the optimizer model.

The update meta-prompt is assembled in the order GPO.md lays out, with the reference code's
wording and blank lines:

    Your task is to write a prompt to replace <Prompt>.     (edit: "modify the current prompt")
    <direction block>                                       (trajectory / summary / current)
    The current prompt is:
    {current}
    [Below are the problems with this prompt. {problems}]          (reflection baselines)
    The following exemplars show how to apply the prompt: ...
    Input: {question} <Prompt> Output: {answer}                    (three format examples)
    Carefully analyze the previous prompts and their scores, and write a new improved prompt
    to replace <Prompt> at the end of the question in the task examples.
    [You are allowed to change up to {N} words in the current prompt.]   (word budget)
    Wrap the new prompt with <START> and <END>.

The budget sentence is inserted before the last line followed by a blank line, as the reference
does. Scores are fractions in [0, 1] inside the program; `percent` prints them on the 0-100 scale
the text announces (rounded to an integer). `raw` is the reference code's text: the fraction in a
trajectory, `round(score, 2)` where one prompt is shown with its score (APE, APO, SGDM), and the
editing variant's wording ("Modify the current prompt and get ...", "..., modify the current
prompt, and get ...", "Wrap the modified prompt ...", and "with your text" in the exemplar
explanation when an edit without reflection shows a trajectory).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from backends.errors import ConfigError
from gpo.trajectory import TrajectoryEntry

Position = Literal["Q_end", "Q_begin", "before_Q", "A_begin"]
POSITIONS: tuple[str, ...] = ("Q_end", "Q_begin", "before_Q", "A_begin")
UpdateStyle = Literal["generate", "edit"]
UPDATE_STYLES: tuple[str, ...] = ("generate", "edit")
ScoreScale = Literal["percent", "raw"]
SCORE_SCALES: tuple[str, ...] = ("percent", "raw")

PLACEHOLDER = "<Prompt>"
WRAP_PROMPT = "Wrap the new prompt with <START> and <END>."
EXEMPLAR_EXPLANATION = (
    "The following exemplars show how to apply the prompt: you replace <Prompt> in each input "
    "with your new prompt, then read the input and give an output. We say your output is wrong "
    "if it is different from the given output, and we say your output is correct if they are "
    "the same."
)
TRAJECTORY_HEADER = (
    "Below are the previous prompts with their scores. The score ranges from 0 to 100, "
    "and higher scores indicate better quality."
)
SINGLE_SCORE_RANGE = "The score ranges from 0 to 100, and higher score indicates better quality."

_POSITION_PHRASES = {
    "Q_end": "at the end of the question",
    "Q_begin": "at the beginning of the question",
    "before_Q": "before the question",
    "A_begin": "at the beginning of the answer",
}


@dataclass(frozen=True, slots=True)
class FormatExample:
    """A labelled example that shows the optimizer where the prompt goes."""

    question: str
    answer: str


@dataclass(frozen=True, slots=True)
class WrongExample:
    """A training item the current prompt got wrong, for reflection."""

    question: str
    prediction: str
    answer: str


def check_choice(value: str, valid: tuple[str, ...], flag: str, what: str) -> None:
    if value not in valid:
        raise ConfigError(f"unknown {what} {value!r} ({flag}); valid: {', '.join(valid)}")


def format_score(score: float, scale: ScoreScale) -> str:
    if scale == "percent":
        return str(round(score * 100))
    if scale == "raw":
        return repr(float(score))
    raise ConfigError(f"unknown score scale {scale!r} (--score-scale); valid: percent, raw")


def format_single_score(score: float, scale: ScoreScale) -> str:
    """A score shown alone: as `format_score`, but `raw` rounds to 2 places as the reference."""
    return str(round(float(score), 2)) if scale == "raw" else format_score(score, scale)


def position_phrase(position: Position) -> str:
    check_choice(position, POSITIONS, "--position", "instruction position")
    return _POSITION_PHRASES[position]


def render_example(example: FormatExample, position: Position) -> str:
    if position == "Q_end":
        body = f"{example.question}\n{PLACEHOLDER}"
    elif position in ("Q_begin", "before_Q"):
        body = f"{PLACEHOLDER}\n{example.question}"
    elif position == "A_begin":
        body = f"Q: {example.question}\nA: {PLACEHOLDER}"
    else:
        position_phrase(position)  # raises with the valid choices
        raise AssertionError("unreachable")
    return f"Input:\n{body}\nOutput:\n{example.answer}"


def render_examples(examples: Sequence[FormatExample], position: Position) -> str:
    return "\n\n".join(render_example(example, position) for example in examples)


def insert_word_budget(text: str, word_budget: int | None) -> str:
    """Put the budget sentence before the last line, then a blank line, as the reference does."""
    if word_budget is None:
        return text
    head, _, last = text.rpartition("\n")
    sentence = f"You are allowed to change up to {word_budget} words in the current prompt.\n"
    return f"{head}\n{sentence}\n{last}"


def render_update_prompt(
    *,
    style: UpdateStyle,
    current: TrajectoryEntry,
    examples: Sequence[FormatExample],
    position: Position,
    shown: Sequence[TrajectoryEntry] = (),
    previous_summary: TrajectoryEntry | None = None,
    problems: str | None = None,
    word_budget: int | None = None,
    score_scale: ScoreScale = "percent",
) -> str:
    """The meta-prompt that asks the optimizer for a new prompt.

    `shown` is the retrieved trajectory (already in display order); `previous_summary` is the
    summarised-trajectory momentum (a prompt with its score); with neither, the current prompt
    is shown with its score. `problems` is the reflection text of the reflection baselines.
    """
    check_choice(style, UPDATE_STYLES, "--update", "update style")
    where = position_phrase(position)
    reference = score_scale == "raw"
    wrap = WRAP_PROMPT
    explanation = EXEMPLAR_EXPLANATION
    if style == "generate":
        intro = "Your task is to write a prompt to replace <Prompt>."
        act = "and write a new improved prompt"
        alone = "write a new improved prompt"
    else:
        intro = "Your task is to modify the current prompt to replace <Prompt>."
        act = "and modify the current prompt, and get a new improved prompt"
        alone = "modify the current prompt, and get a new improved prompt"
        if reference:
            act = "modify the current prompt, and get a new improved prompt"
            alone = "modify the current prompt and get a new improved prompt"
            wrap = "Wrap the modified prompt with <START> and <END>."
            if problems is None and (shown or previous_summary is not None):
                explanation = explanation.replace("with your new prompt", "with your text")

    if shown:
        blocks = "\n\n".join(
            f"Prompt: {entry.prompt}\nScore: {format_score(entry.dev_score, score_scale)}"
            for entry in shown
        )
        direction = f"{TRAJECTORY_HEADER}\n\n{blocks}\n\n"
        instruction = f"Carefully analyze the previous prompts and their scores, {act}"
    elif previous_summary is not None:
        direction = (
            f"Below is the previous prompt with its score. {SINGLE_SCORE_RANGE}\n"
            f"Prompt: {previous_summary.prompt}\n"
            f"Score: {format_single_score(previous_summary.dev_score, score_scale)}\n\n"
        )
        instruction = f"Carefully analyze the previous prompt and its score, {act}"
    else:
        direction = (
            f"Below is the current prompt with its score. {SINGLE_SCORE_RANGE}\n"
            f"Prompt: {current.prompt}\n"
            f"Score: {format_single_score(current.dev_score, score_scale)}\n\n"
        )
        instruction = alone[0].upper() + alone[1:]

    problem_block = (
        f"Below are the problems with this prompt.\n\n{problems}\n\n"
        if problems is not None
        else ""
    )
    text = (
        f"{intro}\n\n"
        f"{direction}"
        f"The current prompt is:\n{current.prompt}\n\n"
        f"{problem_block}"
        f"{explanation}\n\n"
        f"{render_examples(examples, position)}\n\n"
        f"{instruction} to replace <Prompt> {where} in the task examples.\n"
        f"{wrap}"
    )
    return insert_word_budget(text, word_budget)


def render_reflection_prompt(current_prompt: str, wrong: Sequence[WrongExample]) -> str:
    """Ask the optimizer why the current prompt got these training examples wrong."""
    errors = "\n\n".join(
        f"Question: {item.question}\n"
        f"Wrong prediction: {item.prediction}\n"
        f"Ground truth answer: {item.answer}"
        for item in wrong
    )
    return (
        "Your task is to point out the problems with the current prompt based on the wrong "
        "examples.\n\n"
        f"The current prompt is:\n{current_prompt}\n\n"
        "But this prompt gets the following examples wrong.\n"
        "You should analyze the differences between wrong predictions and ground truth answers, "
        "and carefully consider why this prompt led to incorrect predictions.\n\n"
        "Below are the task examples with Question, Wrong prediction, and Ground truth answer."
        f"\n\n{errors}\n\n"
        "Give a reason why the prompt could have gotten these examples wrong.\n"
        "Wrap the reason with <START> and <END>."
    )


def render_problem_integration_prompt(previous_problems: str, current_problems: str) -> str:
    """SGDM's momentum: fold this step's problems into the running summary of problems."""
    return (
        "Your task is to integrate the problems in the previous prompt and the current prompt."
        "\n\n"
        "Below are the problems that arose from the previous prompts.\n"
        f"{previous_problems}\n\n"
        "Below are the problems of the current prompt.\n"
        f"{current_problems}\n\n"
        "You should integrate the problems of the previous prompt and the current prompt.\n"
        "Wrap the integrated problems with <START> and <END>."
    )


def render_prompt_summary_prompt(
    previous: TrajectoryEntry, current: TrajectoryEntry, score_scale: ScoreScale = "percent"
) -> str:
    """Summarised trajectory without reflection: merge the running summary prompt and the
    current prompt into a new summary prompt."""
    return (
        "Your task is to summarize the previous and current prompt based on their scores and "
        "create a new prompt.\n"
        f"{SINGLE_SCORE_RANGE}\n\n"
        "Below is the previous prompt with its score.\n"
        f"Prompt: {previous.prompt}\n"
        f"Score: {format_single_score(previous.dev_score, score_scale)}\n\n"
        "Below is the current prompt with its score.\n"
        f"Prompt: {current.prompt}\n"
        f"Score: {format_single_score(current.dev_score, score_scale)}\n\n"
        "You should create a new prompt based on the previous and current prompt with their "
        "score.\n"
        "Wrap the created prompt with <START> and <END>."
    )


NO_WRONG_EXAMPLES = "The current prompt answers every example of this training batch correctly."
