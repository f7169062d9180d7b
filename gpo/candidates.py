"""Turning the optimizer's raw answers into candidate prompts.

The meta-prompt asks for the new prompt between `<START>` and `<END>`. The text between the first
`<START>` and the first `<END>` after it is taken (the whole answer where a marker is missing),
stripped, `**` removed and the first letter capitalised, as the reference implementation does.
Candidates are then de-duplicated in order; a prompt scored earlier in the run keeps its score
instead of being scored again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

START_MARKER = "<START>"
END_MARKER = "<END>"


def extract_between_markers(text: str, start: str = START_MARKER, end: str = END_MARKER) -> str:
    """The text between `start` and `end`, stripped; a missing marker means the text's edge."""
    begin = text.find(start)
    begin = 0 if begin < 0 else begin + len(start)
    finish = text.find(end, begin)
    if finish < 0:
        finish = len(text)
    return text[begin:finish].strip()


def polish(text: str) -> str:
    """Strip, drop markdown bold markers, capitalise the first letter."""
    text = text.strip()
    if not text:
        return text
    text = text.replace("**", "").strip()
    if len(text) > 1:
        text = text[0].upper() + text[1:]
    return text


def parse_marked_answer(raw: str) -> str:
    """A prompt (or a reflection) from one raw optimizer answer."""
    return polish(extract_between_markers(raw))


@dataclass(frozen=True, slots=True)
class Candidate:
    """One proposed prompt of a step; `known_score` is set when it was scored before."""

    index: int
    raw: str
    prompt: str
    known_score: float | None = None


def parse_candidates(
    raw_answers: Iterable[str], known_scores: Mapping[str, float]
) -> tuple[list[Candidate], int]:
    """Parse, drop empty prompts and in-step duplicates (first wins), attach known scores.

    Returns the unique candidates in answer order and how many answers were dropped.
    """
    seen: set[str] = set()
    unique: list[Candidate] = []
    dropped = 0
    for index, raw in enumerate(raw_answers):
        prompt = parse_marked_answer(raw)
        if not prompt or prompt in seen:
            dropped += 1
            continue
        seen.add(prompt)
        unique.append(Candidate(index, raw, prompt, known_scores.get(prompt)))
    return unique, dropped
