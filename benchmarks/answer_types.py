"""What kind of answer a task expects, derived from its data rather than listed by hand.

Each gold target is classified: `(A)`-style option -> multiple choice; a word of one of the
boolean vocabularies (True/False, Yes/No, valid/invalid, any case) -> boolean with that
vocabulary; an integer, possibly negative -> numeric; a list of references -> free text scored by
ROUGE-L. A task takes the kind that at least 90% of its targets share, so that a few malformed
gold labels (BBH has "Monsters, Inc" among movie_recommendation's options) do not change how the
rest are parsed; those few are still scored by exact match. Only two BBH tasks are named, because
their targets are free text that the data cannot tell apart: dyck_languages (closing brackets)
and word_sorting (a sorted word list).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from benchmarks.sample import Sample


class AnswerType(StrEnum):
    MULTIPLE_CHOICE = "multiple_choice"
    BOOLEAN = "boolean"
    NUMERIC = "numeric"
    DYCK = "dyck"
    WORD_SORTING = "word_sorting"
    FREE_TEXT = "free_text"
    """Generation scored by ROUGE-L against the references (WebNLG)."""
    EXACT_TEXT = "exact_text"
    """Short text with no recognisable kind, scored by exact match after normalisation."""


class Metric(StrEnum):
    ACCURACY = "accuracy"
    ROUGE_L = "rouge_l"


@dataclass(frozen=True, slots=True)
class BooleanVocabulary:
    """The two words a boolean-like task answers with, as shown to the scorer."""

    positive: str
    negative: str


BOOLEAN_VOCABULARIES: tuple[BooleanVocabulary, ...] = (
    BooleanVocabulary("True", "False"),
    BooleanVocabulary("Yes", "No"),
    BooleanVocabulary("valid", "invalid"),
)


@dataclass(frozen=True, slots=True)
class AnswerSpec:
    """A task's answer type, and its vocabulary when the type is boolean."""

    answer_type: AnswerType
    vocabulary: BooleanVocabulary | None = None


NAMED_ANSWER_TYPES: dict[str, AnswerType] = {
    "bbh/dyck_languages": AnswerType.DYCK,
    "bbh/word_sorting": AnswerType.WORD_SORTING,
}

DOMINANT_KIND_SHARE = 0.9

_OPTION_TARGET = re.compile(r"\([A-Za-z]\)")
_INTEGER_TARGET = re.compile(r"-?\d+")
_VOCABULARY_BY_WORD: dict[str, BooleanVocabulary] = {
    word.lower(): vocabulary
    for vocabulary in BOOLEAN_VOCABULARIES
    for word in (vocabulary.positive, vocabulary.negative)
}


def derive_answer_spec(task_name: str, samples: Iterable[Sample]) -> AnswerSpec:
    """The answer spec of `task_name`, from the kinds of its samples' gold targets."""
    named = NAMED_ANSWER_TYPES.get(task_name)
    if named is not None:
        return AnswerSpec(named)
    kinds: Counter[AnswerType] = Counter()
    vocabularies: Counter[BooleanVocabulary] = Counter()
    for sample in samples:
        if sample.references:
            return AnswerSpec(AnswerType.FREE_TEXT)
        kind, vocabulary = classify_target(sample.target)
        kinds[kind] += 1
        if vocabulary is not None:
            vocabularies[vocabulary] += 1
    if not kinds:
        return AnswerSpec(AnswerType.EXACT_TEXT)
    kind, count = kinds.most_common(1)[0]
    if count < DOMINANT_KIND_SHARE * sum(kinds.values()):
        return AnswerSpec(AnswerType.EXACT_TEXT)
    if kind is AnswerType.BOOLEAN:
        return AnswerSpec(kind, vocabularies.most_common(1)[0][0])
    return AnswerSpec(kind)


def classify_target(target: str) -> tuple[AnswerType, BooleanVocabulary | None]:
    """The kind of one gold target string (EXACT_TEXT when it is none of the known kinds)."""
    text = target.strip()
    if _OPTION_TARGET.fullmatch(text):
        return AnswerType.MULTIPLE_CHOICE, None
    if _INTEGER_TARGET.fullmatch(text):
        return AnswerType.NUMERIC, None
    vocabulary = _VOCABULARY_BY_WORD.get(text.lower())
    if vocabulary is not None:
        return AnswerType.BOOLEAN, vocabulary
    return AnswerType.EXACT_TEXT, None
