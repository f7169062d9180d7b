"""Score a scorer's answer against a sample's gold answer: parse, then compare.

Under the task's answer rules: `reference` (the default) gives the reference implementation's
verdict (`reference_rules`); `lenient` is exact match after the answer type's parser (see
`normalize`) has been applied to both the answer and the gold target, so the gold target fed
back as an answer always scores 1, and boolean answers compare by class (yes = valid = true).
ROUGE-L F is the metric for free text: by default the `rouge` package's (1.0.1, case-sensitive,
no stemming, as the reference), or `rouge_score`'s (stemmed, lowercased); with several
references it is averaged over them as the paper does ("mean"), or their best ("max"). ROUGE-L
can also be asked of any other task (the paper reports it for WSC): the reference is then the
gold option's text for multiple choice, else the target.

Scoring runs for hundreds of thousands of answers, so regexes are compiled once, gold targets are
normalised once per distinct target, and one ROUGE scorer is shared.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import TYPE_CHECKING

from benchmarks.answer_types import AnswerType, BooleanVocabulary, Metric
from benchmarks.normalize import (
    parse_boolean,
    parse_dyck,
    parse_exact_text,
    parse_multiple_choice,
    parse_number,
    parse_word_list,
    strip_answer_cues,
)
from benchmarks.reference_rules import reference_parse, reference_score
from benchmarks.sample import Sample
from benchmarks.task import Task

if TYPE_CHECKING:
    from rouge import Rouge
    from rouge_score.rouge_scorer import RougeScorer

_OPTION_TARGET = re.compile(r"\(([A-Za-z])\)")


def extract_answer(task: Task, text: str) -> str:
    """The answer `text` gives, normalised the way `score_answer` compares it."""
    spec = task.answer_spec
    if _reference_rules(task):
        return reference_parse(spec.answer_type, text)
    return _parse(spec.answer_type, spec.vocabulary, text)


def score_answer(task: Task, sample: Sample, text: str) -> float:
    """The score in [0, 1] of answer `text` to `sample` under the task's metric."""
    spec = task.answer_spec
    if task.metric is Metric.ROUGE_L:
        references = rouge_references(task, sample)
        if spec.answer_type is AnswerType.FREE_TEXT:
            prediction = text.strip()
        else:
            # ROUGE-L of a short answer (a project option; the reference has none): the answer
            # after its cue, lowercased by the cue stripping, so the references are too.
            prediction = strip_answer_cues(text)[0]
            references = tuple(reference.lower() for reference in references)
        return rouge_l(prediction, references, task.rouge_reduction, task.rouge_package)
    if _reference_rules(task):
        return reference_score(spec.answer_type, sample.target, text)
    if spec.answer_type is AnswerType.FREE_TEXT:
        answer = parse_exact_text(text)
        golds = {_normalized_target(AnswerType.EXACT_TEXT, None, ref) for ref in _refs(sample)}
        return 1.0 if answer in golds else 0.0
    gold = _normalized_target(spec.answer_type, spec.vocabulary, sample.target)
    if gold:
        answer = _parse(spec.answer_type, spec.vocabulary, text)
    else:
        # A gold label the type's parser cannot read (a malformed label): compare as text.
        gold = _normalized_target(AnswerType.EXACT_TEXT, None, sample.target)
        answer = parse_exact_text(text)
    return 1.0 if answer == gold else 0.0


def rouge_l(
    prediction: str, references: Sequence[str], reduction: str = "mean", package: str = "rouge"
) -> float:
    """ROUGE-L F of `prediction` against each reference, averaged ("mean") or best ("max").

    `package` "rouge" is the reference's (`Rouge().get_scores`, rouge-l f); an answer or a
    reference it cannot score (empty, or only dots and spaces) scores 0 there instead of
    stopping the run. "rouge_score" is the stemmed, lowercased ROUGE-L of `rouge_score`.
    """
    if not references:
        return 0.0
    if package == "rouge":
        scores = [_rouge_package_f(prediction, reference) for reference in references]
    else:
        scorer = _rouge_scorer()
        scores = [scorer.score(ref, prediction)["rougeL"].fmeasure for ref in references]
    return max(scores) if reduction == "max" else sum(scores) / len(scores)


def _rouge_package_f(prediction: str, reference: str) -> float:
    try:
        return float(_rouge_package().get_scores(prediction, reference)[0]["rouge-l"]["f"])
    except (ValueError, ZeroDivisionError):
        return 0.0


def rouge_references(task: Task, sample: Sample) -> tuple[str, ...]:
    """What ROUGE-L compares an answer with: the references, or the gold option's text."""
    if sample.references:
        return sample.references
    if task.answer_type is AnswerType.MULTIPLE_CHOICE:
        option_text = gold_option_text(sample)
        if option_text:
            return (option_text,)
    return (sample.target,)


def gold_option_text(sample: Sample) -> str | None:
    """The text of the option the target names ("Ovid" for target "(B)" and line "(B) Ovid")."""
    match = _OPTION_TARGET.fullmatch(sample.target.strip())
    if match is None:
        return None
    line = re.search(rf"^\s*\({match.group(1)}\)\s*(.+)$", sample.input, re.MULTILINE)
    return line.group(1).strip() if line else None


def _parse(answer_type: AnswerType, vocabulary: BooleanVocabulary | None, text: str) -> str:
    if answer_type is AnswerType.MULTIPLE_CHOICE:
        return parse_multiple_choice(text)
    if answer_type is AnswerType.BOOLEAN:
        return parse_boolean(text, vocabulary)
    if answer_type is AnswerType.NUMERIC:
        return parse_number(text)
    if answer_type is AnswerType.DYCK:
        return parse_dyck(text)
    if answer_type is AnswerType.WORD_SORTING:
        return parse_word_list(text)
    if answer_type is AnswerType.FREE_TEXT:
        return text.strip()
    return parse_exact_text(text)


@lru_cache(maxsize=1 << 16)
def _normalized_target(
    answer_type: AnswerType, vocabulary: BooleanVocabulary | None, target: str
) -> str:
    return _parse(answer_type, vocabulary, target)


def _reference_rules(task: Task) -> bool:
    return (
        getattr(task, "answer_rules", "reference") == "reference"
        and task.answer_type is not AnswerType.FREE_TEXT
    )


def _refs(sample: Sample) -> tuple[str, ...]:
    return sample.references or (sample.target,)


@cache
def _rouge_scorer() -> RougeScorer:
    # Imported on first use: rouge_score pulls in nltk, which takes most of a second to import.
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(["rougeL"], use_stemmer=True)


@cache
def _rouge_package() -> Rouge:
    from rouge import Rouge

    return Rouge(metrics=["rouge-l"])
