"""The second user turn that pins a chat scorer's answer down to a parseable form.

The scorer's first answer is kept as the assistant turn, and this follow-up asks for the answer
alone (GPO.md, "Scoring the scorer's answers"). Free-text tasks (WebNLG) have none: their first
answer is the output.
"""

from __future__ import annotations

import re

from benchmarks.answer_types import AnswerType
from benchmarks.sample import Sample
from benchmarks.task import Task

NUMERIC_TURN = "Therefore, summarize your final answer with just one number in your response."
DYCK_TURN = (
    "Directly output the closing brackets that complete the sequence, separated by spaces, "
    "and nothing else."
)
WORD_SORTING_TURN = "Directly output the sorted words, separated by spaces, and nothing else."

_OPTION_AT_LINE_START = re.compile(r"^\s*\(([A-Z])\)", re.MULTILINE)
_OPTION_ANYWHERE = re.compile(r"\(([A-Z])\)")


def answer_turn(task: Task, sample: Sample) -> str | None:
    """The follow-up user turn for `sample`, or None when the task has none."""
    answer_type = task.answer_type
    if answer_type is AnswerType.MULTIPLE_CHOICE:
        last = last_option_letter(sample.input)
        if last is None:
            return None
        return f"Therefore, summarize your answer with an option among (A) and ({last})."
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


def last_option_letter(question: str) -> str | None:
    """The last option letter listed in a question ("D" for options (A)..(D)), if any.

    Options written at the start of a line are preferred, so that a "(B)" quoted inside the
    question text does not count.
    """
    letters = _OPTION_AT_LINE_START.findall(question) or _OPTION_ANYWHERE.findall(question)
    return letters[-1] if letters else None
