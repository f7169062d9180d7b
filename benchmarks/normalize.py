"""Turn a scorer's free-form answer into a comparable string, one parser per answer type.

Every parser first applies the shared normalisation (GPO.md, "Scoring the scorer's answers"):
lowercase; drop markdown bold (`**`); keep the text after the last answer cue (`#### `,
`answer is `, `answer: `, `answer is: `; only when none is present, `is: ` or `are: `); cut the
text before ` is the correct/right/final answer` or ` is the answer`. Then, per type:

- multiple choice: the first `(x)`; a bare letter ("B", "b.") when the whole answer is one;
  otherwise the normalised text itself (so a malformed gold label can still be matched exactly).
- boolean: punctuation dropped; the answer's boolean word (true/yes/valid vs false/no/invalid are
  one class each; a lone `1`/`0` means true/false; "not" before the word flips it). The word is
  the whole answer, else its first token, else the last boolean word in the text, provided
  every boolean word in the text names the same class (a hedge such as "I cannot say yes or
  no." names none).
- numeric: number words one..twelve become digits; the text after the last `=`; `$ , % € £ :`
  removed; the first token holding a digit if an answer cue was found, else the last; the first
  number in that token (so trailing letters drop), rounded half-to-even to an integer string.
- dyck: the last run of closing brackets, one space between brackets.
- word sorting: the word list after the last colon, list markers and punctuation dropped.
- exact text: the normalised text without trailing punctuation.

Parsers never raise: an answer with nothing to parse yields "" (numeric, dyck) or the cleaned text.
"""

from __future__ import annotations

import re
import string
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from benchmarks.answer_types import BooleanVocabulary

_PRIMARY_CUES: tuple[str, ...] = ("#### ", "answer is ", "answer: ", "answer is: ")
_FALLBACK_CUES: tuple[str, ...] = ("is: ", "are: ")
_VERDICT_SUFFIX = re.compile(r" is the (?:(?:correct|right|final) )?answer")

_OPTION = re.compile(r"\(([a-z])\)")
_BARE_LETTER = re.compile(r"([a-z])[.)]?")

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_BOOLEAN_CLASSES: dict[str, bool] = {
    "true": True,
    "yes": True,
    "valid": True,
    "false": False,
    "no": False,
    "invalid": False,
}
_LONE_DIGIT_CLASSES: dict[str, bool] = {"1": True, "0": False}

_NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        (
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
        ),
        start=1,
    )
}
_NUMBER_WORD = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b")
_NUMERIC_NOISE = str.maketrans("", "", "$,%€£:")
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})
_HAS_DIGIT = re.compile(r"\d")
_LEADING_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")

_CLOSING_RUN = re.compile(r"[)\]}>](?:\s*[)\]}>])*")
_WHITESPACE = re.compile(r"\s+")

_WORD_SEPARATORS = re.compile(r"[\s,;]+")
_WORD_EDGE_PUNCTUATION = '.;:!?"()[]{}*`_'
_LIST_MARKER = re.compile(r"(?:\d+[.)]?|[-•*])")


def strip_answer_cues(text: str) -> tuple[str, bool]:
    """The shared normalisation: (normalised text, whether an answer cue was found)."""
    lowered = text.lower().replace("**", "")
    cue_end = _last_cue_end(lowered, _PRIMARY_CUES)
    if cue_end < 0:
        cue_end = _last_cue_end(lowered, _FALLBACK_CUES)
    cue_found = cue_end >= 0
    if cue_found:
        lowered = lowered[cue_end:]
    verdict = _VERDICT_SUFFIX.search(lowered)
    if verdict is not None:
        lowered = lowered[: verdict.start()]
    return lowered.strip(), cue_found


def parse_multiple_choice(text: str) -> str:
    """The chosen option as "(x)", else the normalised text."""
    body, _ = strip_answer_cues(text)
    option = _OPTION.search(body)
    if option is not None:
        return f"({option.group(1)})"
    bare = _BARE_LETTER.fullmatch(body)
    if bare is not None:
        return f"({bare.group(1)})"
    return _strip_trailing_punctuation(body)


def parse_boolean(text: str, vocabulary: BooleanVocabulary | None) -> str:
    """The boolean answer as the task's own (lowercase) word, else the cleaned text."""
    body, _ = strip_answer_cues(text)
    cleaned = body.translate(_PUNCTUATION)
    tokens = cleaned.split()
    verdict = _boolean_verdict(tokens)
    if verdict is None:
        return " ".join(tokens)
    if vocabulary is None:
        return "true" if verdict else "false"
    return (vocabulary.positive if verdict else vocabulary.negative).lower()


def parse_number(text: str) -> str:
    """The answer as an integer string ("-6", "34"), or "" when it holds no number."""
    body, cue_found = strip_answer_cues(text.translate(_MINUS_SIGNS))
    body = _NUMBER_WORD.sub(lambda match: _NUMBER_WORDS[match.group(1)], body)
    if "=" in body:
        body = body.rsplit("=", 1)[1]
    body = body.translate(_NUMERIC_NOISE)
    tokens = [token for token in body.split() if _HAS_DIGIT.search(token)]
    if not tokens:
        return ""
    token = tokens[0] if cue_found else tokens[-1]
    number = _LEADING_NUMBER.search(token)
    if number is None:
        return ""
    return _round_to_integer_string(number.group(0))


def parse_dyck(text: str) -> str:
    """The last run of closing brackets, e.g. "] ) }", or "" when there is none."""
    body, _ = strip_answer_cues(text)
    runs = _CLOSING_RUN.findall(body)
    if not runs:
        return ""
    return " ".join(_WHITESPACE.sub("", runs[-1]))


def parse_word_list(text: str) -> str:
    """The answer's words, space-separated, without list markers or punctuation."""
    body, _ = strip_answer_cues(text)
    if ":" in body:
        body = body.rsplit(":", 1)[1]
    words = []
    for raw in _WORD_SEPARATORS.split(body):
        if not raw or _LIST_MARKER.fullmatch(raw):
            continue
        word = raw.strip(_WORD_EDGE_PUNCTUATION)
        if word:
            words.append(word)
    return " ".join(words)


def parse_exact_text(text: str) -> str:
    """The normalised text without trailing punctuation."""
    body, _ = strip_answer_cues(text)
    return _strip_trailing_punctuation(body)


def _last_cue_end(text: str, cues: tuple[str, ...]) -> int:
    best = -1
    for cue in cues:
        position = text.rfind(cue)
        if position >= 0:
            best = max(best, position + len(cue))
    return best


def _boolean_verdict(tokens: list[str]) -> bool | None:
    if len(tokens) == 1 and tokens[0] in _LONE_DIGIT_CLASSES:
        return _LONE_DIGIT_CLASSES[tokens[0]]
    positions = [i for i, token in enumerate(tokens) if token in _BOOLEAN_CLASSES]
    if not positions:
        return None
    if positions[0] == 0:
        return _BOOLEAN_CLASSES[tokens[0]]
    verdicts = {_BOOLEAN_CLASSES[tokens[i]] != (tokens[i - 1] == "not") for i in positions}
    return verdicts.pop() if len(verdicts) == 1 else None


def _round_to_integer_string(number: str) -> str:
    try:
        value = Decimal(number).to_integral_value(rounding=ROUND_HALF_EVEN)
    except InvalidOperation:
        return ""
    rendered = format(value, "f")
    return "0" if rendered == "-0" else rendered


def _strip_trailing_punctuation(text: str) -> str:
    return text.rstrip(" .!?;,").strip()
