"""Rambling reasoning text of an exact length, cut cheaply from one pre-built passage.

The passage is built once from a fixed seed; an answer takes a slice starting at a word chosen by
the request's key, so producing a few hundred tokens of text costs one slice, not a loop.
"""

from __future__ import annotations

import random

_OPENINGS = (
    "Let us look at the question carefully.",
    "First, we read what is being asked.",
    "We need to work through this one piece at a time.",
    "To answer this, consider each part of the problem.",
    "Start with the information that is given.",
)
_SENTENCES = (
    "The key detail here is how the facts relate to each other.",
    "If we follow the statements in order, a pattern appears.",
    "One of the options can be ruled out right away.",
    "We should check whether this is consistent with the rest.",
    "Counting again confirms the same result.",
    "This step depends on the previous one, so we keep track of it.",
    "Looking at the remaining choices, only some still fit.",
    "The wording of the question matters for this part.",
    "Putting these observations together narrows it down.",
    "There is a small trap here, and it is easy to miss.",
    "Let us verify the intermediate value before moving on.",
    "Comparing the two cases shows which one holds.",
    "Nothing in the question contradicts this reasoning.",
    "We can double check by working backwards from the end.",
    "So far everything lines up with the given facts.",
)
_PASSAGE_SENTENCES = 2000


def _build_passage() -> tuple[str, tuple[int, ...]]:
    rng = random.Random(20240227)
    sentences = [rng.choice(_OPENINGS)]
    sentences.extend(rng.choice(_SENTENCES) for _ in range(_PASSAGE_SENTENCES))
    passage = " ".join(sentences) + " "
    starts = tuple(i + 1 for i, ch in enumerate(passage) if ch == " " and passage[i - 1] == ".")
    return passage, starts


_PASSAGE, _SENTENCE_STARTS = _build_passage()


def filler_text(chars: int, key: int) -> str:
    """Exactly `chars` ASCII characters of reasoning-like text, chosen by `key`.

    The text starts at a sentence and ends at a word boundary, padded with spaces when needed.
    """
    if chars <= 0:
        return ""
    pieces = []
    remaining = chars
    start = _SENTENCE_STARTS[key % len(_SENTENCE_STARTS)]
    while remaining > 0:
        piece = _PASSAGE[start : start + remaining]
        pieces.append(piece)
        remaining -= len(piece)
        start = 0
    text = "".join(pieces)
    cut = text.rfind(" ")
    if cut > 0 and not text.endswith(" "):
        text = text[:cut]
    return text.ljust(chars)
