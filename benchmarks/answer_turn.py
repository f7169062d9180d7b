"""The second user turn that pins a chat scorer's answer down to a parseable form.

The scorer's first answer is kept as the assistant turn, and this follow-up asks for the answer
alone (GPO.md, "Scoring the scorer's answers"), in the reference implementation's words, byte
for byte. Free-text tasks (WebNLG) have none: their first answer is the output.

Multiple choice: MMLU always names (D) and WSC (B), as the reference does. For BBH the
reference reads the last option from the first turn's line just before the instruction
(`Q_end`; the last line for `Q_begin`): the first bracketed letter there, or the whole line when
it holds none. Given that first turn, `answer_turn` does the same, so an empty instruction
(the line before is the second-to-last option) or an instruction of several lines gets the
reference's text; without it, the question's last listed option.
"""

from __future__ import annotations

import re

from benchmarks.answer_types import AnswerType
from benchmarks.sample import Sample
from benchmarks.task import Task

NUMERIC_TURN = "Therefore, summarize your final answer with just one number in your response."
DYCK_TURN = "Directly output the newly added parentheses that make the parentheses close correctly."
WORD_SORTING_TURN = (
    "Directly output the result of sorting the words alphabetically, separating each word "
    "with a space."
)
WSC_TURN = "Therefore, summarize your answer with an option between (A) and (B)."
MMLU_TURN = "Therefore, summarize your answer with an option among (A) and (D)."

_OPTION_AT_LINE_START = re.compile(r"^\s*\(([A-Z])\)", re.MULTILINE)
_OPTION_ANYWHERE = re.compile(r"\(([A-Z])\)")
_BRACKETED_LETTER = re.compile(r"\([A-Za-z]\)")
_LINE_BEFORE_INSTRUCTION = {"Q_end": -2, "Q_begin": -1}


def answer_turn(
    task: Task, sample: Sample, first_turn: str | None = None, position: str = "Q_end"
) -> str | None:
    """The follow-up user turn for `sample`, or None when the task has none.

    `first_turn` is the text of the scorer's first user turn and `position` where the
    instruction sits in it; BBH's multiple-choice turn reads its last option from there.
    """
    answer_type = task.answer_type
    if answer_type is AnswerType.MULTIPLE_CHOICE:
        if task.group == "wsc":
            return WSC_TURN
        if task.group == "mmlu":
            return MMLU_TURN
        end_choice = _end_choice(sample.input, first_turn, position)
        if end_choice is None:
            return None
        return f"Therefore, summarize your answer with an option among (A) and {end_choice}."
    if answer_type is AnswerType.BOOLEAN:
        vocabulary = task.boolean_vocabulary
        if vocabulary is None:
            return None
        return (
            f'Directly tell me your answer using only "{vocabulary.positive}" '
            f'or "{vocabulary.negative}".'
        )
    if answer_type is AnswerType.NUMERIC:
        return NUMERIC_TURN
    if answer_type is AnswerType.DYCK:
        return DYCK_TURN
    if answer_type is AnswerType.WORD_SORTING:
        return WORD_SORTING_TURN
    return None


def _end_choice(question: str, first_turn: str | None, position: str) -> str | None:
    line_index = _LINE_BEFORE_INSTRUCTION.get(position)
    if first_turn is not None and line_index is not None:
        lines = first_turn.split("\n")
        if len(lines) >= -line_index:
            line = lines[line_index]
            option = _BRACKETED_LETTER.search(line)
            return option.group(0) if option else line
    last = last_option_letter(question)
    return None if last is None else f"({last})"


def last_option_letter(question: str) -> str | None:
    """The last option letter listed in a question ("D" for options (A)..(D)), if any.

    Options written at the start of a line are preferred, so that a "(B)" quoted inside the
    question text does not count.
    """
    letters = _OPTION_AT_LINE_START.findall(question) or _OPTION_ANYWHERE.findall(question)
    return letters[-1] if letters else None
